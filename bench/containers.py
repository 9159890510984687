"""Benchmark: the hardened launcher against bare Docker, and the OCR image against a bare loop.

    make bench-containers            # or: .venv/bin/python bench/containers.py [--rounds 20]

1. Launch overhead. One no-op container (the testkit image on an empty
   shard: start Python, read params, write an empty predictions file) three
   ways, in interleaved rounds (the order rotates each round), after warm-up:
   - ``launcher``: ``worker.containers.run(ContainerSpec(...))``, the path a
     shard takes (resolve + digest check, create, start, wait, inspect, logs,
     remove);
   - ``dockerpy``: bare docker-py ``create, start, wait, remove``;
   - ``cli``: ``docker run --rm``.
   All three get the same options (``container_options``: mounts, limits,
   no network, no capabilities), so the ratio is the launcher's own cost.
2. OCR throughput. The ocr-rapidocr image on the sample dataset through
   ``worker.containers.run``, against the same RapidOCR engine (the image's
   ``make_engine``, same params) in a bare Python loop inside the same image
   (bench/ocr_bare_loop.py mounted read-only), in alternating rounds. Both
   sides time each sample from the end of the previous one, so the fixed
   start-up (container, imports, model load, warm-up) is outside both: the
   platform's per-sample times are seen from the host, as each line of
   predictions.jsonl lands; the bare loop's are timed inside. Throughput is
   1 / the median per-sample time over all rounds.

Figures are medians; ratios are against baselines measured in the same run.
The last two lines are::

    ocr: throughput_vs_bare=<x>                             (>= 0.95 is the target)
    containers: launch_vs_dockerpy=<x> launch_vs_cli=<x>    (<= 1.1 against docker-py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker

from worker import containers

REPO = Path(__file__).resolve().parent.parent
VERSION = (REPO / "images" / "VERSION").read_text().strip()
WORK = REPO / "var" / "bench" / "containers"
BENCH_LABEL = "org.hyperbench.bench"
UID = 10001


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _image_id(dc: docker.DockerClient, ref: str) -> str:
    try:
        return str(dc.images.get(ref).id)
    except docker.errors.ImageNotFound:
        sys.exit(f"bench: image {ref} is missing; build it with `make images` (or scripts/build-images.sh).")


def _job(base: Path, data: Path, samples: list[dict[str, Any]]) -> Path:
    """A job directory laid out like the worker's (input, params, writable output)."""
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    base.chmod(0o755)
    (base / "input.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (base / "params.json").write_text(json.dumps({"params": {}, "prompt": "", "task": "ocr"}))
    out = base / "output"
    out.mkdir()
    try:
        os.chown(out, UID, UID)
    except PermissionError:
        out.chmod(0o777)
    data.mkdir(parents=True, exist_ok=True)
    return base


def _spec(image: str, digest: str, job: Path, data: Path, **limits: Any) -> containers.ContainerSpec:
    return containers.ContainerSpec(
        image=image,
        digest=digest,
        mounts=[
            containers.BindMount(data, "/data"),
            containers.BindMount(job / "input.jsonl", "/job/input.jsonl"),
            containers.BindMount(job / "params.json", "/job/params.json"),
            containers.BindMount(job / "output", "/job/output", read_only=False),
        ],
        labels={BENCH_LABEL: "1"},
        **{"timeout_s": 600, "memory_mb": 512, "cpus": 1.0, "pids": 256, **limits},
    )


def _cli_flags(opts: dict[str, Any]) -> list[str]:
    """``docker run`` flags for the launcher's create options (the same container, from the CLI)."""
    flags = [
        f"--user={opts['user']}",
        f"--network={opts['network_mode']}",
        f"--ipc={opts['ipc_mode']}",
        "--read-only",
        f"--memory={opts['mem_limit']}",
        f"--memory-swap={opts['memswap_limit']}",
        f"--pids-limit={opts['pids_limit']}",
        f"--cpus={opts['nano_cpus'] / 1e9}",
    ]
    flags += [f"--cap-drop={c}" for c in opts["cap_drop"]]
    flags += [f"--security-opt={s}" for s in opts["security_opt"]]
    flags += [f"--tmpfs={k}:{v}" for k, v in opts["tmpfs"].items()]
    flags += [f"--env={k}={v}" for k, v in opts["environment"].items()]
    flags += [f"--label={k}={v}" for k, v in opts["labels"].items()]
    for m in opts["mounts"]:
        ro = ",readonly" if m["ReadOnly"] else ""
        flags.append(f"--mount=type=bind,source={m['Source']},target={m['Target']}{ro}")
    return flags


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_launch(dc: docker.DockerClient, rounds: int, warmup: int) -> dict[str, float]:
    image = f"hyperbench/testkit:{VERSION}"
    digest = _image_id(dc, image)
    data = WORK / "empty-data"
    job = _job(WORK / "noop-job", data, [])
    spec = _spec(image, digest, job, data)
    opts = containers.container_options(spec, digest)
    cli = ["docker", "run", "--rm", *_cli_flags(opts), digest]

    def launcher() -> None:
        result = containers.run(spec)
        if result.exit_code != 0:
            raise RuntimeError(f"launcher: no-op container failed: {result.log_tail}")

    def dockerpy() -> None:
        c = dc.containers.create(**opts)
        try:
            c.start()
            if c.wait()["StatusCode"] != 0:
                raise RuntimeError("docker-py: no-op container failed")
        finally:
            c.remove(force=True)

    def docker_cli() -> None:
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)

    ways: dict[str, Callable[[], None]] = {"launcher": launcher, "dockerpy": dockerpy, "cli": docker_cli}
    names = list(ways)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        order = names[r % 3 :] + names[: r % 3]  # rotate, so no way always follows another
        for n in order:
            t = _time(ways[n])
            if r >= warmup:
                times[n].append(t)
    med = {n: statistics.median(v) for n, v in times.items()}
    for n in names:
        v = sorted(times[n])
        _say(f"launch {n:9s} median {med[n] * 1000:7.1f} ms  (min {v[0] * 1000:.1f}, max {v[-1] * 1000:.1f})")
    return med


def _ocr_dataset(n: int) -> Path:
    sys.path.insert(0, str(REPO / "scripts"))
    import make_sample_dataset  # a script, not a package

    out = WORK / "ocr-data" / "sample-docs" / "1"
    make_sample_dataset.write_dataset(out, n, 7)
    for p in (out, *out.rglob("*")):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return out


def bench_ocr(dc: docker.DockerClient, samples: int, rounds: int) -> float:
    image = f"hyperbench/ocr-rapidocr:{VERSION}"
    digest = _image_id(dc, image)
    data = _ocr_dataset(samples)
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines() if x.strip()]
    inputs = [{"id": r["id"], "image": r["image"]} for r in rows[:samples]]
    limits = {"memory_mb": 2048, "cpus": 2.0}
    loop = REPO / "bench" / "ocr_bare_loop.py"
    bare_opts = containers.container_options(_spec(image, digest, WORK / "bare", data, **limits), digest)
    bare_opts["mounts"] = [m for m in bare_opts["mounts"] if m["Target"] == "/data"]
    bare = [
        *("docker", "run", "--rm", *_cli_flags(bare_opts)),
        f"--mount=type=bind,source={loop},target=/bench/loop.py,readonly",
        "--entrypoint=/opt/venv/bin/python",
        digest,
        *("/bench/loop.py", "/data/manifest.jsonl", str(samples)),
    ]

    def platform() -> list[float]:
        job = _job(WORK / "ocr-job", data, inputs)
        preds = job / "output" / "predictions.jsonl"
        landed: list[float] = []
        stop = threading.Event()

        def watch() -> None:
            # The host's view of the shard: when each prediction line lands (5 ms resolution).
            while not stop.is_set() and len(landed) < samples:
                try:
                    count = preds.read_bytes().count(b"\n")
                except OSError:
                    count = 0
                now = time.perf_counter()
                landed.extend([now] * (count - len(landed)))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            result = containers.run(_spec(image, digest, job, data, **limits))
        finally:
            stop.set()
            watcher.join()
        if result.exit_code != 0:
            raise RuntimeError(f"ocr image failed: {result.log_tail}")
        got = preds.read_text().splitlines()
        if len(got) != samples or any(json.loads(x)["error"] for x in got) or len(landed) != samples:
            raise RuntimeError("ocr image: missing or failed predictions")
        return [b - a for a, b in zip(landed, landed[1:], strict=False)]

    def bare_loop() -> list[float]:
        out = subprocess.run(bare, check=True, capture_output=True, text=True).stdout
        return [float(x) for x in json.loads(out.strip().splitlines()[-1])["intervals_s"]]

    per_sample: dict[str, list[float]] = {"platform": [], "bare": []}
    for r in range(rounds):
        steps: list[tuple[str, Callable[[], list[float]]]] = [("platform", platform), ("bare", bare_loop)]
        steps = steps[r % 2 :] + steps[: r % 2]
        for name, fn in steps:
            got_intervals = fn()
            per_sample[name] += got_intervals
            _say(
                f"ocr round {r + 1} {name:8s}: median {statistics.median(got_intervals):.3f} s/sample, "
                f"mean {statistics.mean(got_intervals):.3f}"
            )
    # Medians of per-sample times: a burst of load from another job on a shared
    # machine moves a mean (or a span) a lot and a median little.
    med = {name: statistics.median(v) for name, v in per_sample.items()}
    _say(f"ocr: platform {1 / med['platform']:.2f} samples/s, bare loop {1 / med['bare']:.2f} samples/s")
    return med["bare"] / med["platform"]


def _cleanup(dc: docker.DockerClient) -> None:
    for c in dc.containers.list(all=True, filters={"label": f"{BENCH_LABEL}=1"}):
        c.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="timed launch rounds (each way once per round)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed launch rounds first")
    ap.add_argument("--ocr-samples", type=int, default=12, help="samples in the OCR shard")
    ap.add_argument("--ocr-rounds", type=int, default=5)
    ap.add_argument("--skip-ocr", action="store_true")
    args = ap.parse_args(argv)
    dc = containers.client()
    WORK.mkdir(parents=True, exist_ok=True)
    _say(f"bench: run {uuid.uuid4().hex[:8]}, {os.cpu_count()} cores, work dir {WORK}")
    try:
        launch = bench_launch(dc, args.rounds, args.warmup)
        ocr = None if args.skip_ocr else bench_ocr(dc, args.ocr_samples, args.ocr_rounds)
    finally:
        _cleanup(dc)
    if ocr is not None:
        print(f"ocr: throughput_vs_bare={ocr:.3f}")
    vs_py = launch["launcher"] / launch["dockerpy"]
    vs_cli = launch["launcher"] / launch["cli"]
    print(f"containers: launch_vs_dockerpy={vs_py:.3f} launch_vs_cli={vs_cli:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
