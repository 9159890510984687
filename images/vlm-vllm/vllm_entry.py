"""HyperBench model image: a VLM served in-process by vLLM offline inference (GPU), contract v1.

The weights come from a read-only mount, ``/model`` (``HB_MODEL_DIR``): the host
worker mounts the directory that the registered model names, from a host-side
allow-list (see README.md). Nothing is downloaded: the container has no network
and HF_HUB_OFFLINE is set.

Samples go to ``vllm.LLM.chat`` in batches (``batch_size`` conversations per
call; vLLM's scheduler batches further inside). Each conversation is the prompt
and the sample's image as a base64 ``data:`` URL, rendered with the model's own
chat template. A sample whose image cannot be read gets its error without
reaching the engine; a batch that fails is retried one sample at a time, so one
bad sample cannot take its neighbours down.

Params (``/job/params.json`` ``{"params": {...}, "prompt": "...", "task": "ocr"|"vqa"}``), allow-listed:
  batch_size (int, default 32, 1..1024)          conversations per LLM.chat call
  max_tokens (int, default 1024, 1..16384), temperature (float, default 0.0, 0..2), seed (int, default 0)
  tensor_parallel_size (int, default: the GPUs visible, 1..8)
  gpu_memory_utilization (float, default 0.90, 0.10..0.98)
  max_model_len (int, optional, 256..262144), max_num_seqs (int, optional, 1..1024)
  dtype ("auto" | "bfloat16" | "float16", default "auto")
  enforce_eager (bool, default true: no CUDA-graph capture or compile caches on a read-only root)
The prompt is params.json's ``prompt``, else the task's default (the same as vlm-openai).

Each prediction line carries, besides the contract keys: ``usage``
(``prompt_tokens``, ``completion_tokens``, ``total_tokens``), ``finish_reason``,
``batch_ms`` and ``batch_size``. ``latency_ms`` is the batch's wall time divided
by its size (the amortised cost of a sample under batching), not a request latency.
"""

from __future__ import annotations

import base64
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperbench_sdk import (
    PredictionWriter,
    done_ids,
    image_mime,
    read_params,
    read_samples,
    render_prompt,
    resolve_data_path,
    write_progress,
)

DEFAULT_PROMPTS = {
    "ocr": (
        "Transcribe all the text in this image, line by line, in reading order. "
        "Output only the transcribed text, with no commentary."
    ),
    "vqa": "Answer the question about this document image with a short answer only.\nQuestion: {question}",
}
MAX_IMAGE_BYTES = 20 * 1024 * 1024


class ConfigError(ValueError):
    """Params or the model directory unusable: the shard cannot start."""


@dataclass(frozen=True)
class Options:
    batch_size: int
    max_tokens: int
    temperature: float
    seed: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int | None
    max_num_seqs: int | None
    dtype: str
    enforce_eager: bool
    prompt: str
    task: str


def _log(msg: str) -> None:
    print(f"vlm-vllm: {msg}", file=sys.stderr, flush=True)


def model_dir() -> Path:
    return Path(os.environ.get("HB_MODEL_DIR", "/model"))


def visible_gpus(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        value = env.get(name, "").strip()
        if value and value not in ("all", "none", "void"):
            return len([v for v in value.split(",") if v.strip()])
    return 1


def _int(params: dict[str, Any], name: str, default: int | None, lo: int, hi: int) -> int | None:
    v = params.get(name, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _req_int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = _int(params, name, default, lo, hi)
    assert v is not None
    return v


def _float(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = params.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be a number in {lo}..{hi}, not {v!r}")
    return float(v)


def load_options(raw: dict[str, Any]) -> Options:
    params = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    assert isinstance(params, dict)
    task = raw.get("task") or "ocr"
    if task not in DEFAULT_PROMPTS:
        raise ConfigError(f"task must be one of {sorted(DEFAULT_PROMPTS)}, not {task!r}")
    prompt = raw.get("prompt") or DEFAULT_PROMPTS[task]
    if not isinstance(prompt, str):
        raise ConfigError("prompt must be a string")
    dtype = params.get("dtype", "auto")
    if dtype not in ("auto", "bfloat16", "float16"):
        raise ConfigError(f"dtype must be 'auto', 'bfloat16' or 'float16', not {dtype!r}")
    eager = params.get("enforce_eager", True)
    if not isinstance(eager, bool):
        raise ConfigError("enforce_eager must be true or false")
    return Options(
        batch_size=_req_int(params, "batch_size", 32, 1, 1024),
        max_tokens=_req_int(params, "max_tokens", 1024, 1, 16384),
        temperature=_float(params, "temperature", 0.0, 0.0, 2.0),
        seed=_req_int(params, "seed", 0, 0, 2**31 - 1),
        tensor_parallel_size=_req_int(params, "tensor_parallel_size", min(visible_gpus(), 8), 1, 8),
        gpu_memory_utilization=_float(params, "gpu_memory_utilization", 0.90, 0.10, 0.98),
        max_model_len=_int(params, "max_model_len", None, 256, 262144),
        max_num_seqs=_int(params, "max_num_seqs", None, 1, 1024),
        dtype=str(dtype),
        enforce_eager=eager,
        prompt=prompt,
        task=task,
    )


def conversation(sample: dict[str, Any], opts: Options) -> list[dict[str, Any]]:
    """One chat conversation; raises for an unreadable image (that sample's error)."""
    path = resolve_data_path(sample.get("image", ""))
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ValueError(f"image larger than {MAX_IMAGE_BYTES} bytes")
    data = path.read_bytes()
    url = f"data:{image_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"
    return [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": render_prompt(opts.prompt, sample)},
            ],
        }
    ]


def make_engine(opts: Options) -> tuple[Any, Any]:
    """(LLM, SamplingParams) for the mounted weights. vLLM is imported here, so this
    module stays importable (and testable) where vLLM is not installed."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise ConfigError(
            f"vLLM is not installed in this image ({e}); build images/vlm-vllm on a GPU host"
        ) from e
    mdir = model_dir()
    if not (mdir / "config.json").is_file():
        raise ConfigError(
            f"no model at {mdir} (config.json missing): the worker must mount the registered model's "
            "weights directory read-only at /model"
        )
    kwargs: dict[str, Any] = {
        "model": str(mdir),
        "tokenizer": str(mdir),
        "dtype": opts.dtype,
        "tensor_parallel_size": opts.tensor_parallel_size,
        "gpu_memory_utilization": opts.gpu_memory_utilization,
        "enforce_eager": opts.enforce_eager,
        "seed": opts.seed,
        "limit_mm_per_prompt": {"image": 1},
        "trust_remote_code": False,
    }
    if opts.max_model_len is not None:
        kwargs["max_model_len"] = opts.max_model_len
    if opts.max_num_seqs is not None:
        kwargs["max_num_seqs"] = opts.max_num_seqs
    llm = LLM(**kwargs)
    sampling = SamplingParams(max_tokens=opts.max_tokens, temperature=opts.temperature, seed=opts.seed)
    return llm, sampling


def output_fields(out: Any) -> tuple[str, dict[str, int], str | None]:
    """(text, usage, finish_reason) of one vLLM RequestOutput."""
    first = out.outputs[0]
    prompt_tokens = len(getattr(out, "prompt_token_ids", None) or [])
    completion_tokens = len(getattr(first, "token_ids", None) or [])
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    finish = getattr(first, "finish_reason", None)
    return str(first.text).strip(), usage, None if finish is None else str(finish)


def run(llm: Any, sampling: Any, opts: Options) -> int:
    samples = read_samples()
    total = len(samples)
    already = done_ids()
    todo = []
    for s in samples:
        if str(s["id"]) not in already:
            already.add(str(s["id"]))
            todo.append(s)
    done = total - len(todo)
    write_progress(done, total)
    errors = 0
    with PredictionWriter() as writer:
        for start in range(0, len(todo), opts.batch_size):
            batch: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
            for sample in todo[start : start + opts.batch_size]:
                try:
                    batch.append((sample, conversation(sample, opts)))
                except Exception as e:  # noqa: BLE001 - a failing sample must not kill the shard
                    writer.write(sample["id"], None, None, f"{type(e).__name__}: {e}"[:2000])
                    errors += 1
                    done += 1
            groups = [batch] if batch else []
            while groups:
                group = groups.pop(0)
                t0 = time.perf_counter()
                try:
                    outs = llm.chat([conv for _, conv in group], sampling_params=sampling, use_tqdm=False)
                except Exception as e:  # noqa: BLE001 - isolate the sample that breaks the batch
                    if len(group) > 1:
                        _log(f"a batch of {len(group)} failed ({type(e).__name__}: {e}); retrying one by one")
                        groups = [[item] for item in group] + groups
                        continue
                    sample = group[0][0]
                    writer.write(sample["id"], None, None, f"{type(e).__name__}: {e}"[:2000])
                    errors += 1
                    done += 1
                    continue
                batch_ms = (time.perf_counter() - t0) * 1000.0
                for (sample, _), out in zip(group, outs, strict=True):
                    text, usage, finish = output_fields(out)
                    writer.write(
                        sample["id"],
                        text,
                        batch_ms / len(group),
                        None,
                        extra={
                            "usage": usage,
                            "finish_reason": finish,
                            "batch_ms": round(batch_ms, 3),
                            "batch_size": len(group),
                        },
                    )
                    done += 1
            write_progress(done, total)
    write_progress(done, total, errors=errors)
    _log(f"done: {done}/{total} samples, {errors} errors this session")
    return 0


def main() -> int:
    try:
        opts = load_options(read_params())
        samples, already = read_samples(), done_ids()
        if all(str(s["id"]) in already for s in samples):
            write_progress(len(samples), len(samples))  # a finished shard: do not load the model
            return 0
        t0 = time.perf_counter()
        llm, sampling = make_engine(opts)
        _log(f"engine ready in {time.perf_counter() - t0:.1f}s (tp={opts.tensor_parallel_size})")
    except ConfigError as e:
        _log(f"configuration error: {e}")
        return 2
    return run(llm, sampling, opts)


if __name__ == "__main__":
    sys.exit(main())
