"""Check that a model image follows container contract v1 ("bring your own model").

    python -m worker.validate_image IMAGE [--gpus N] [--task ocr|vqa|table|kie|page] [--params JSON]
                                          [--endpoint FILE] [--timeout S] [--memory-mb MB]

Renders a tiny dataset (3 samples) into a temporary directory, runs IMAGE on it
exactly as the host worker would (``worker.containers.run``: no network,
read-only root, a small /tmp tmpfs, all capabilities dropped,
no-new-privileges, user 10001:10001, memory/pids/CPU limits, a deadline), and
checks what it wrote:

- the container exits 0 within the deadline, not OOM-killed;
- ``/job/output/predictions.jsonl``: every line a JSON object with ``id``,
  ``prediction`` (string, or null when ``error`` is set), ``latency_ms``
  (a number >= 0, or null) and ``error`` (null or a string);
  exactly one line per sample, no id that is not in the shard;
- ``/job/output/progress.json``: ``{"done": 3, "total": 3, ...}``.

Prints one PASS/FAIL line per check and exits 0 when all pass, 1 otherwise, 2
when the check could not run (no Docker engine, no such image, bad arguments).

``--endpoint FILE`` is for API models (vlm-openai): FILE is mounted read-only at
``/job/endpoint.json`` and the container gets host networking, as a model
registered with ``network`` does. Without it the image runs under
``--network none``.

No Django: this module belongs to the host worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker import containers
from worker.errors import HostError
from worker.manifest import TASKS

SAMPLES = 3
VQA_QUESTIONS = ["What is the total?", "Who is the vendor?", "What is the date?"]
REQUIRED_KEYS = ("id", "prediction", "latency_ms", "error")
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


# ----------------------------------------------------------------------------- the tiny dataset


def _png(width: int, height: int, bars: list[tuple[int, int, int, int]]) -> bytes:
    """A grayscale PNG (stdlib only): white, with black rectangles (x0, y0, x1, y1)."""
    rows = []
    for y in range(height):
        row = bytearray(b"\xff" * width)
        for x0, y0, x1, y1 in bars:
            if y0 <= y < y1:
                row[x0:x1] = b"\x00" * (x1 - x0)
        rows.append(b"\x00" + bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def _load_sample_generator() -> Callable[..., Any] | None:
    """scripts/make_sample_dataset.write_dataset when this is a checkout with Pillow, else None."""
    path = REPO / "scripts" / "make_sample_dataset.py"
    if not path.is_file() or importlib.util.find_spec("PIL") is None:
        return None
    spec = importlib.util.spec_from_file_location("hb_make_sample_dataset", path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn = getattr(module, "write_dataset", None)
    return fn if callable(fn) else None


def write_tiny_dataset(out: Path, task: str = "ocr") -> tuple[list[dict[str, Any]], str]:
    """A 3-sample dataset in ``out``. Returns (the shard's input lines, how it was made)."""
    generator = _load_sample_generator()
    if generator is not None:
        generator(out, SAMPLES, 7)
        manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines() if line]
        how = "rendered documents (scripts/make_sample_dataset.py)"
    else:
        (out / "images").mkdir(parents=True, exist_ok=True)
        manifest = []
        for i in range(SAMPLES):
            bars = [(20, 20 + 30 * j, 60 + 60 * ((i + j) % 5), 36 + 30 * j) for j in range(3)]
            name = f"images/tiny-{i}.png"
            (out / name).write_bytes(_png(360, 120, bars))
            manifest.append({"id": f"tiny-{i}", "image": name, "text": ""})
        (out / "dataset.json").write_text(json.dumps({"name": "validate", "version": "1", "task": task}))
        (out / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
        how = "generated PNGs (Pillow not installed)"
    samples = []
    for i, m in enumerate(manifest):
        line = {"id": str(m["id"]), "image": m["image"]}
        if task == "vqa":
            line["question"] = VQA_QUESTIONS[i % len(VQA_QUESTIONS)]
        samples.append(line)
    for p in [out, *out.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return samples, how


# ----------------------------------------------------------------------------- checks


def check_predictions(path: Path, ids: list[str]) -> list[Check]:
    checks: list[Check] = []
    if not path.is_file():
        return [Check("predictions.jsonl written", False, "no /job/output/predictions.jsonl")]
    checks.append(Check("predictions.jsonl written", True))
    problems: list[str] = []
    seen: dict[str, int] = {}
    unknown: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    if text and not text.endswith("\n"):
        problems.append("the last line has no newline (a torn write)")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        row = _parse_row(lineno, line)
        if isinstance(row, str):
            problems.append(row)
            continue
        problems.extend(_row_type_problems(lineno, row))
        key = str(row["id"])
        if key not in ids:
            unknown.append(key)
        seen[key] = seen.get(key, 0) + 1
    checks.append(
        Check(
            "every line is a JSON object with id, prediction, latency_ms, error of the right types",
            not problems,
            "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
        )
    )
    dupes = sorted(k for k, n in seen.items() if n > 1)
    absent = [i for i in ids if i not in seen]
    checks.append(
        Check(
            f"exactly one prediction per sample ({len(ids)})",
            not dupes and not absent,
            "; ".join(
                x
                for x in (
                    f"no prediction for {absent}" if absent else "",
                    f"more than one prediction for {dupes}" if dupes else "",
                )
                if x
            ),
        )
    )
    checks.append(
        Check(
            "no prediction for an id that is not in the shard",
            not unknown,
            f"unknown ids {unknown[:5]}" if unknown else "",
        )
    )
    return checks


def _parse_row(lineno: int, line: str) -> dict[str, Any] | str:
    """One predictions line as a JSON object holding every required key, or what is wrong with it."""
    try:
        row = json.loads(line)
    except ValueError as e:
        return f"line {lineno} is not JSON ({e})"
    if not isinstance(row, dict):
        return f"line {lineno} is not a JSON object"
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        return f"line {lineno} lacks {', '.join(missing)}"
    return row


def _row_type_problems(lineno: int, row: dict[str, Any]) -> list[str]:
    """What is wrong with the types of a parsed row's id, prediction, latency_ms and error."""
    problems: list[str] = []
    sid, pred, lat, err = row["id"], row["prediction"], row["latency_ms"], row["error"]
    if not isinstance(sid, str):
        problems.append(f"line {lineno}: id must be the input's string id, got {sid!r}")
    if err is not None and not isinstance(err, str):
        problems.append(f"line {lineno}: error must be null or a string, got {type(err).__name__}")
    if pred is not None and not isinstance(pred, str):
        problems.append(f"line {lineno}: prediction must be a string or null, got {type(pred).__name__}")
    if pred is None and not err:
        problems.append(f"line {lineno}: prediction is null but error is not set")
    if lat is not None and (isinstance(lat, bool) or not isinstance(lat, (int, float)) or lat < 0):
        problems.append(f"line {lineno}: latency_ms must be a number >= 0 or null, got {lat!r}")
    return problems


def check_progress(path: Path, total: int) -> Check:
    name = "progress.json is {done, total} with done == total"
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Check(name, False, "no /job/output/progress.json")
    except (OSError, ValueError) as e:
        return Check(name, False, f"not JSON: {e}")
    if not isinstance(obj, dict):
        return Check(name, False, "not a JSON object")
    done, tot = obj.get("done"), obj.get("total")
    if not isinstance(done, int) or not isinstance(tot, int) or isinstance(done, bool):
        return Check(name, False, f"done/total must be integers, got {done!r}/{tot!r}")
    if tot != total or done != total:
        return Check(name, False, f"done={done} total={tot}, expected {total}/{total}")
    return Check(name, True)


# ----------------------------------------------------------------------------- the run


def _gpu_ids(n: int) -> tuple[list[str], Check | None]:
    if n <= 0:
        return [], None
    from worker.gpus import list_gpus

    found = list_gpus()
    if len(found) < n:
        return [], Check(f"{n} GPU(s) available on this host", False, f"NVML reports {len(found)}")
    return [str(g["index"]) for g in found[:n]], Check(f"{n} GPU(s) available on this host", True)


def validate(
    image: str,
    *,
    task: str = "ocr",
    params: dict[str, Any] | None = None,
    prompt: str = "",
    gpus: int = 0,
    endpoint: Path | None = None,
    timeout_s: int = 300,
    memory_mb: int = 2048,
    cpus: float = 2.0,
    pids: int = 256,
    keep: Path | None = None,
) -> list[Check]:
    """Run ``image`` on a tiny dataset under the contract; return the checks, in order.

    Raises:
        HostError: the Docker engine is unreachable or the image is not present.
    """
    checks: list[Check] = []
    image_id = containers.local_image_id(image)  # what staff register as the model's digest
    checks.append(Check("image present on this host", True, f"register it with digest {image_id}"))
    gpu_ids, gpu_check = _gpu_ids(gpus)
    if gpu_check is not None:
        checks.append(gpu_check)
        if not gpu_check.ok:
            return checks
    root = Path(tempfile.mkdtemp(prefix="hb-validate-"))
    try:
        root.chmod(0o755)
        data = root / "data"  # created by write_tiny_dataset
        samples, how = write_tiny_dataset(data, task)
        job = root / "job"
        job.mkdir()
        (job / "input.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples), encoding="utf-8")
        (job / "params.json").write_text(
            json.dumps({"params": params or {}, "prompt": prompt, "task": task}), encoding="utf-8"
        )
        out = job / "output"
        out.mkdir()
        for p in (job, job / "input.jsonl", job / "params.json"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        out.chmod(0o777)
        mounts = [
            containers.BindMount(data, "/data"),
            containers.BindMount(job / "input.jsonl", "/job/input.jsonl"),
            containers.BindMount(job / "params.json", "/job/params.json"),
            containers.BindMount(out, "/job/output", read_only=False),
        ]
        if endpoint is not None:
            ep = job / "endpoint.json"
            shutil.copyfile(endpoint, ep)
            ep.chmod(0o644)
            mounts.append(containers.BindMount(ep, "/job/endpoint.json"))
        spec = containers.ContainerSpec(
            image=image,
            digest=image_id,
            mounts=mounts,
            labels={"org.hyperbench.stage": "validate"},
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            cpus=cpus,
            pids=pids,
            tmpfs_mb=512,
            network=endpoint is not None,
            gpu_ids=gpu_ids,
        )
        result = containers.run(spec)
        net = "host network (API model)" if endpoint is not None else "--network none"
        hardening = f"{net}, read-only root, cap-drop ALL, no-new-privileges, user {spec.user}"
        ok = result.exit_code == 0 and not result.timed_out and not result.oom_killed
        detail = f"{result.duration_s:.1f}s on {len(samples)} samples ({how}); {hardening}"
        if not ok:
            detail = containers.describe_failure("the container", result, timeout_s, memory_mb)
        checks.append(Check("container exits 0 under the hardened options", ok, detail))
        ids = [s["id"] for s in samples]
        checks.extend(check_predictions(out / "predictions.jsonl", ids))
        checks.append(check_progress(out / "progress.json", len(ids)))
        if keep is not None:
            shutil.copytree(root, keep, dirs_exist_ok=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return checks


def report(image: str, checks: list[Check], stream: Any = None) -> bool:
    stream = stream or sys.stdout
    print(f"validate-image: {image}", file=stream)
    for c in checks:
        line = f"  {'PASS' if c.ok else 'FAIL'}  {c.name}"
        if c.detail:
            line += f": {c.detail}"
        print(line, file=stream)
    passed = all(c.ok for c in checks)
    failed = sum(1 for c in checks if not c.ok)
    verdict = "PASS" if passed else f"FAIL ({failed} of {len(checks)} checks failed)"
    print(f"RESULT: {verdict}", file=stream)
    return passed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m worker.validate_image",
        description="Run a model image on a tiny dataset under container contract v1 and check its output.",
    )
    ap.add_argument("image", help="a local image reference (name:tag or id)")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs to give the container (default 0)")
    # The task goes into params.json (a model picks its prompt or output format by it); the samples
    # are the same rendered documents for every task (vqa adds a question): a contract check.
    ap.add_argument("--task", choices=TASKS, default="ocr")
    ap.add_argument("--params", default="{}", help="model params as JSON, e.g. '{\"psm\": 6}'")
    ap.add_argument("--prompt", default="", help="prompt template (default: the image's own)")
    ap.add_argument(
        "--endpoint",
        type=Path,
        help="API models: a JSON file mounted at /job/endpoint.json (implies host networking)",
    )
    ap.add_argument("--timeout", type=int, default=300, help="deadline in seconds (default 300)")
    ap.add_argument("--memory-mb", type=int, default=2048)
    ap.add_argument("--keep", type=Path, help="copy the dataset, job and output here for inspection")
    args = ap.parse_args(argv)
    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("must be a JSON object")
    except ValueError as e:
        print(f"validate-image: --params: {e}", file=sys.stderr)
        return 2
    if args.endpoint is not None and not args.endpoint.is_file():
        print(f"validate-image: --endpoint {args.endpoint}: no such file", file=sys.stderr)
        return 2
    try:
        checks = validate(
            args.image,
            task=args.task,
            params=params,
            prompt=args.prompt,
            gpus=args.gpus,
            endpoint=args.endpoint,
            timeout_s=args.timeout,
            memory_mb=args.memory_mb,
            keep=args.keep,
        )
    except HostError as e:
        print(f"validate-image: cannot run the check: {e}", file=sys.stderr)
        return 2
    return 0 if report(args.image, checks) else 1


if __name__ == "__main__":
    os.umask(0o022)
    sys.exit(main())
