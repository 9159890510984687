"""HyperBench container SDK: container contract v1, standard library only.

A model image reads its shard from ``/job/input.jsonl`` and ``/job/params.json``,
the dataset from ``/data`` (read-only), and writes ``/job/output/predictions.jsonl``
(one line per sample: ``{"id", "prediction", "latency_ms", "error"}``) and
``/job/output/progress.json``. Exit code 0 means the shard is done; a sample that
fails gets a line with ``error`` set and never kills the shard.

The simplest model image is::

    from hyperbench_sdk import run_model

    def predict(sample, image_path, params):
        return my_model(image_path)

    raise SystemExit(run_model(predict))

Paths can be moved with ``HB_DATA_DIR`` (default ``/data``) and ``HB_JOB_DIR``
(default ``/job``), which is how the SDK is tested without Docker.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

__all__ = [
    "CONTRACT_VERSION",
    "DATA_DIR",
    "INPUT_FILE",
    "JOB_DIR",
    "OUTPUT_DIR",
    "PARAMS_FILE",
    "PREDICTIONS_FILE",
    "PROGRESS_FILE",
    "Paths",
    "PredictionWriter",
    "UnsafePathError",
    "data_dir",
    "done_ids",
    "image_mime",
    "input_path",
    "job_dir",
    "output_dir",
    "params_path",
    "predictions_path",
    "progress_path",
    "read_params",
    "read_samples",
    "render_prompt",
    "resolve_data_path",
    "run_model",
    "write_progress",
]

CONTRACT_VERSION = 1

# The fixed paths of contract v1 (what a container sees).
DATA_DIR = "/data"
JOB_DIR = "/job"
INPUT_FILE = "/job/input.jsonl"
PARAMS_FILE = "/job/params.json"
OUTPUT_DIR = "/job/output"
PREDICTIONS_FILE = "/job/output/predictions.jsonl"
PROGRESS_FILE = "/job/output/progress.json"

PROGRESS_INTERVAL_S = 0.5

Sample = dict[str, Any]
Params = dict[str, Any]
PredictFn = Callable[[Sample, Path, Params], str]


class UnsafePathError(ValueError):
    """A sample's image path is absolute or escapes the dataset directory."""


def data_dir() -> Path:
    return Path(os.environ.get("HB_DATA_DIR", DATA_DIR))


def job_dir() -> Path:
    return Path(os.environ.get("HB_JOB_DIR", JOB_DIR))


def input_path() -> Path:
    return job_dir() / "input.jsonl"


def params_path() -> Path:
    return job_dir() / "params.json"


def output_dir() -> Path:
    return job_dir() / "output"


def predictions_path() -> Path:
    return output_dir() / "predictions.jsonl"


def progress_path() -> Path:
    return output_dir() / "progress.json"


class Paths:
    """The resolved paths, for code that prefers one object."""

    def __init__(self) -> None:
        self.data = data_dir()
        self.job = job_dir()
        self.input = input_path()
        self.params = params_path()
        self.output = output_dir()
        self.predictions = predictions_path()
        self.progress = progress_path()


def read_samples(path: Path | None = None) -> list[Sample]:
    """The shard's samples, in input order. Blank lines are skipped; a sample needs an ``id``."""
    src = path or input_path()
    samples: list[Sample] = []
    with open(src, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            obj = json.loads(line)
            if not isinstance(obj, dict) or "id" not in obj:
                raise ValueError(f"{src}:{lineno}: a sample must be a JSON object with an 'id'")
            samples.append(obj)
    return samples


def read_params(path: Path | None = None) -> Params:
    """Model params (``{}`` when the file is absent or empty)."""
    src = path or params_path()
    try:
        text = src.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    if not text.strip():
        return {}
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"{src}: params must be a JSON object")
    return obj


def resolve_data_path(relative: str, base: Path | None = None) -> Path:
    """``relative`` under the dataset dir; absolute paths and ``..`` are rejected.

    The check is lexical first (no absolute path, no ``..`` part), then on the
    resolved path (a symlink inside the dataset may not lead outside it).
    """
    root = base or data_dir()
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UnsafePathError(f"invalid image path {relative!r}")
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or any(part == ".." for part in pure.parts):
        raise UnsafePathError(f"image path must be relative and stay inside the dataset: {relative!r}")
    candidate = root.joinpath(*pure.parts)
    real_root = root.resolve()
    real = candidate.resolve()
    if real != real_root and real_root not in real.parents:
        raise UnsafePathError(f"image path leaves the dataset: {relative!r}")
    return candidate


def _fsync_quiet(fh: IO[str]) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fh.fileno())


def write_progress(done: int, total: int, path: Path | None = None, **extra: object) -> None:
    """Write ``{"done", "total", "ts"}`` atomically (temp file + ``os.replace``)."""
    dst = path or progress_path()
    dst.parent.mkdir(parents=True, exist_ok=True)
    payload = {"done": int(done), "total": int(total), "ts": time.time(), **extra}
    fd, tmp = tempfile.mkstemp(prefix=".progress.", suffix=".tmp", dir=str(dst.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
            fh.flush()
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the host worker reads progress
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def done_ids(path: Path | None = None) -> set[str]:
    """Ids that already have a complete line in an existing predictions file.

    A torn last line (the container was killed mid-write) is ignored, and
    :class:`PredictionWriter` truncates it before appending.
    """
    src = path or predictions_path()
    ids: set[str] = set()
    # No file: no ids (suppress() is entered first, so it covers the open()).
    with contextlib.suppress(FileNotFoundError), open(src, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict) and "id" in obj:
                ids.add(str(obj["id"]))
    return ids


def _truncate_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a write interrupted by a kill)."""
    try:
        with open(path, "rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            fh.truncate(cut)
    except FileNotFoundError:
        return


class PredictionWriter:
    """Appends one JSON line per sample to predictions.jsonl, flushed line by line.

    A flushed line is in the host's page cache: a killed container loses nothing, and
    the host reads the file only after the container is gone. So there is no fsync per
    line (on a loaded disk it cost a few percent of an OCR model's throughput); one at
    close is enough, and a host that crashes runs the shard again as a new attempt.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or predictions_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_torn_tail(self.path)
        # The writer owns the handle for its whole life: close() and __exit__ close it.
        self._fh: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open on purpose

    def write(
        self,
        sample_id: object,
        prediction: str | None,
        latency_ms: float | None = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """One line. ``extra`` adds keys (token usage, attempts); it cannot replace the four contract keys."""
        line: dict[str, Any] = {
            "id": sample_id,
            "prediction": prediction,
            "latency_ms": None if latency_ms is None else round(float(latency_ms), 3),
            "error": error,
        }
        for key, value in (extra or {}).items():
            line.setdefault(key, value)
        self._fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            _fsync_quiet(self._fh)
            self._fh.close()

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log(msg: str) -> None:
    print(f"hyperbench-sdk: {msg}", file=sys.stderr, flush=True)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text[:2000]


def run_model(
    predict_fn: PredictFn,
    *,
    warmup: Callable[[Params], None] | None = None,
    progress_interval_s: float = PROGRESS_INTERVAL_S,
) -> int:
    """Run ``predict_fn(sample, image_path, params) -> str`` over the shard.

    - ``warmup(params)`` (optional) runs once before any sample is timed.
    - Samples whose id is already in predictions.jsonl are skipped (resume).
    - Each sample is timed; an exception becomes that sample's ``error`` (with
      ``prediction`` null), the shard goes on.
    - progress.json is written at most every ``progress_interval_s`` and at the end.

    Returns the process exit code (0: the shard is done).
    """
    samples = read_samples()
    params = read_params()
    total = len(samples)
    already = done_ids()
    done = sum(1 for s in samples if str(s["id"]) in already)
    if done:
        _log(f"resuming: {done}/{total} samples already have predictions")
    write_progress(done, total)

    if warmup is not None and done < total:
        t0 = time.perf_counter()
        warmup(params)
        _log(f"warm-up took {(time.perf_counter() - t0) * 1000:.0f} ms")

    last_progress = time.monotonic()
    errors = 0
    with PredictionWriter() as writer:
        for sample in samples:
            sid = sample["id"]
            if str(sid) in already:
                continue
            already.add(str(sid))
            prediction: str | None = None
            error: str | None = None
            t0 = time.perf_counter()
            try:
                image_path = resolve_data_path(sample.get("image", ""))
                result = predict_fn(sample, image_path, params)
                prediction = "" if result is None else str(result)
            except Exception as exc:  # noqa: BLE001 - a failing sample must not kill the shard
                error = _describe(exc)
                errors += 1
                _log(f"sample {sid!r} failed: {error}")
                if os.environ.get("HB_DEBUG"):
                    traceback.print_exc(file=sys.stderr)
            latency_ms = (time.perf_counter() - t0) * 1000.0
            writer.write(sid, prediction, latency_ms, error)
            done += 1
            now = time.monotonic()
            if now - last_progress >= progress_interval_s:
                write_progress(done, total)
                last_progress = now
    write_progress(done, total, errors=errors)
    _log(f"done: {done}/{total} samples, {errors} errors this session")
    return 0


# --- helpers for vision-language models (vlm-openai, vlm-vllm, your own) -----------------------


def image_mime(data: bytes) -> str:
    """The MIME type of an image from its first bytes (for a ``data:`` URL).

    Raises:
        ValueError: not a PNG, JPEG, GIF or WebP image.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("not a PNG, JPEG, GIF or WebP image")


def render_prompt(template: str, sample: Mapping[str, Any]) -> str:
    """The prompt for one sample: ``{question}`` in the template is replaced by the sample's
    question, or the question is appended when the template has no placeholder."""
    question = sample.get("question")
    if question is None:
        return template.replace("{question}", "")
    if "{question}" in template:
        return template.replace("{question}", str(question))
    return f"{template}\n\nQuestion: {question}"
