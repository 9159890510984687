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
   start-up (container, imports, model load, warm-up) is outside both. Both
   are timed from the host by one watcher, as each line lands: the platform's
   lines of predictions.jsonl, the bare loop's one short line per sample in a
   file of its own (its inside timing is printed for comparison). Throughput
   is 1 / the median per-sample time over all rounds. Then the same rounds with
   both sides running at the same time (``together_vs_bare``): they share the
   cores, so a burst of load from another job slows both alike instead of
   whichever side ran in that minute (on a shared 2-core machine one side's
   median moved from 1.1 to 7.8 s/sample between rounds a minute apart).

Figures are medians; ratios are against baselines measured in the same run.
The last two lines are::

    ocr: throughput_vs_bare=<x> together_vs_bare=<x>        (>= 0.95 is the target)
    containers: launch_vs_dockerpy=<x> launch_vs_cli=<x>    (<= 1.1 against docker-py)
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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


RUN_ID = uuid.uuid4().hex[:8]
BENCH_TAG = f"bench-{RUN_ID}"


def _image_id(dc: docker.DockerClient, ref: str) -> tuple[str, str]:
    """The image's id and a tag of this run's own on it: (tag, id).

    Other jobs on a shared engine rebuild the version tag while the bench runs; the
    launcher checks the tag against the id at every launch, so the bench runs a private
    tag that only it moves (removed at the end) and measures one image throughout.
    """
    try:
        image = dc.images.get(ref)
    except docker.errors.ImageNotFound:
        sys.exit(f"bench: image {ref} is missing; build it with `make images` (or scripts/build-images.sh).")
    repo = ref.rsplit(":", 1)[0]
    image.tag(repo, BENCH_TAG)
    return f"{repo}:{BENCH_TAG}", str(image.id)


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
        labels={BENCH_LABEL: RUN_ID},  # this run's: another bench on the engine keeps its own
        **{"timeout_s": 600, "memory_mb": 512, "cpus": 1.0, "pids": 256, **limits},
    )


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_launch(dc: docker.DockerClient, rounds: int, warmup: int) -> dict[str, float]:
    image, digest = _image_id(dc, f"hyperbench/testkit:{VERSION}")
    data = WORK / "empty-data"
    job = _job(WORK / "noop-job", data, [])
    spec = _spec(image, digest, job, data)
    opts = containers.container_options(spec, digest)
    cli = ["docker", "run", "--rm", *containers.cli_flags(opts), digest]

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


@contextlib.contextmanager
def _landing(path: Path, n: int) -> Iterator[list[float]]:
    """The host's view of a growing JSON-lines file: when each of its first ``n`` lines lands.

    A thread looks every 5 ms: a stat per look, the file read only when it grew (the
    watcher shares the cores). The same watcher times both sides of the OCR figure,
    so its cost and its resolution are on both.
    """
    landed: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        size = 0
        while not stop.is_set() and len(landed) < n:
            try:
                grown = os.stat(path).st_size != size
                if grown:
                    data = path.read_bytes()
                    size = len(data)
            except OSError:
                grown = False
            if grown:
                now = time.perf_counter()
                landed.extend([now] * (data.count(b"\n") - len(landed)))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield landed
    finally:
        stop.set()
        watcher.join()


def _writable_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        os.chown(path, UID, UID)
    except PermissionError:
        path.chmod(0o777)
    return path


def _paired_ratio(rounds: dict[str, list[list[float]]]) -> float:
    """Median over (round, sample) of bare time / platform time: the same sample, minutes apart."""
    ratios = [
        b / p
        for plat, bare in zip(rounds["platform"], rounds["bare"], strict=True)
        for p, b in zip(plat, bare, strict=True)
        if p > 0
    ]
    return statistics.median(ratios)


def _at_once(fns: dict[str, Callable[[], list[float]]]) -> dict[str, list[float]]:
    """Run the sides at the same time (a thread each); their results, or the first error."""
    out: dict[str, list[float]] = {}
    errors: list[BaseException] = []

    def go(name: str, fn: Callable[[], list[float]]) -> None:
        try:
            out[name] = fn()
        except BaseException as e:  # noqa: BLE001 - raised again below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=go, args=item) for item in fns.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def bench_ocr(dc: docker.DockerClient, samples: int, rounds: int, *, together: bool = False) -> float:
    image, digest = _image_id(dc, f"hyperbench/ocr-rapidocr:{VERSION}")
    data = _ocr_dataset(samples)
    rows = [json.loads(x) for x in (data / "manifest.jsonl").read_text().splitlines() if x.strip()]
    inputs = [{"id": r["id"], "image": r["image"]} for r in rows[:samples]]
    limits = {"memory_mb": 2048, "cpus": 2.0}
    loop = REPO / "bench" / "ocr_bare_loop.py"
    bare_out = WORK / "bare-out"
    bare_opts = containers.container_options(_spec(image, digest, WORK / "bare", data, **limits), digest)
    bare_opts["mounts"] = [m for m in bare_opts["mounts"] if m["Target"] == "/data"]
    bare = [
        *("docker", "run", "--rm", *containers.cli_flags(bare_opts)),
        f"--mount=type=bind,source={loop},target=/bench/loop.py,readonly",
        f"--mount=type=bind,source={bare_out},target=/bench/out",
        "--entrypoint=/opt/venv/bin/python",
        digest,
        *("/bench/loop.py", "/data/manifest.jsonl", str(samples), "/bench/out/lines.jsonl"),
    ]
    inside: list[float] = []  # the bare loop's own timing, for comparison with the host's

    def platform() -> list[float]:
        job = _job(WORK / "ocr-job", data, inputs)
        preds = job / "output" / "predictions.jsonl"
        with _landing(preds, samples) as landed:
            result = containers.run(_spec(image, digest, job, data, **limits))
        if result.exit_code != 0:
            raise RuntimeError(f"ocr image failed: {result.log_tail}")
        got = preds.read_text().splitlines()
        if len(got) != samples or any(json.loads(x)["error"] for x in got) or len(landed) != samples:
            raise RuntimeError("ocr image: missing or failed predictions")
        return [b - a for a, b in itertools.pairwise(landed)]

    def bare_loop() -> list[float]:
        lines = _writable_dir(bare_out) / "lines.jsonl"
        with _landing(lines, samples) as landed:
            out = subprocess.run(bare, check=True, capture_output=True, text=True).stdout
        inside.extend(float(x) for x in json.loads(out.strip().splitlines()[-1])["intervals_s"])
        if len(landed) != samples:
            raise RuntimeError("bare loop: missing lines")
        return [b - a for a, b in itertools.pairwise(landed)]

    per_round: dict[str, list[list[float]]] = {"platform": [], "bare": []}
    mode = "together" if together else "alternating"
    for r in range(rounds):
        if together:  # both at once: whatever else loads the machine loads both alike
            got = _at_once({"platform": platform, "bare": bare_loop})
        else:
            order = ["platform", "bare"] if r % 2 == 0 else ["bare", "platform"]
            got = {name: (platform if name == "platform" else bare_loop)() for name in order}
        for name, got_intervals in got.items():
            per_round[name].append(got_intervals)
            _say(
                f"ocr {mode} round {r + 1} {name:8s}: median {statistics.median(got_intervals):.3f} "
                f"s/sample, mean {statistics.mean(got_intervals):.3f}"
            )
    # Medians of per-sample times: a burst of load from another job on a shared
    # machine moves a mean (or a span) a lot and a median little.
    med = {name: statistics.median(itertools.chain.from_iterable(v)) for name, v in per_round.items()}
    _say(
        f"ocr ({mode}): platform {1 / med['platform']:.2f} samples/s, "
        f"bare loop {1 / med['bare']:.2f} samples/s (both timed from the host); "
        f"bare loop timed inside: {1 / statistics.median(inside):.2f} samples/s"
    )
    paired = _paired_ratio(per_round)
    _say(f"ocr: median per-sample ratio bare/platform (same round, same sample): {paired:.3f}")
    (WORK / f"ocr-intervals-{mode}.json").write_text(json.dumps({**per_round, "bare_inside": inside}))
    return med["bare"] / med["platform"]


def _cleanup(dc: docker.DockerClient) -> None:
    for c in dc.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={RUN_ID}"}):
        c.remove(force=True)
    for repo in ("hyperbench/testkit", "hyperbench/ocr-rapidocr"):
        # The tag only; an image another job's container uses keeps it (a 409): harmless.
        with contextlib.suppress(docker.errors.APIError):
            dc.images.remove(f"{repo}:{BENCH_TAG}", noprune=True)


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
    _say(f"bench: run {RUN_ID}, {os.cpu_count()} cores, work dir {WORK}")
    try:
        launch = bench_launch(dc, args.rounds, args.warmup)
        ocr = None if args.skip_ocr else bench_ocr(dc, args.ocr_samples, args.ocr_rounds)
        together = None if args.skip_ocr else bench_ocr(dc, args.ocr_samples, args.ocr_rounds, together=True)
    finally:
        _cleanup(dc)
    if ocr is not None:
        print(f"ocr: throughput_vs_bare={ocr:.3f} together_vs_bare={together:.3f}")
    vs_py = launch["launcher"] / launch["dockerpy"]
    vs_cli = launch["launcher"] / launch["cli"]
    print(f"containers: launch_vs_dockerpy={vs_py:.3f} launch_vs_cli={vs_cli:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
