"""HyperBench model image: a VLM behind an OpenAI-compatible chat-completions endpoint.

Container contract v1, standard library only (``urllib.request``). Each sample's
image goes as a base64 ``data:`` URL next to the prompt; requests run on a
bounded thread pool, with a per-request timeout and bounded retries (429, 5xx,
timeouts, refused connections) with exponential backoff and jitter.

Where the endpoint comes from (never from run input; see README.md):
  1. ``/job/endpoint.json`` (mounted read-only by the host worker from the
     registered model's server-side configuration)::

        {"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen2-VL-7B-Instruct",
         "api_key": "...",            # optional
         "api_key_env": "NAME",       # optional: read the key from this env var instead
         "max_concurrency": 16,       # optional operator cap on the run param
         "timeout_s": 120}            # optional default per-request timeout
  2. else the environment: ``HB_OPENAI_BASE_URL``, ``HB_OPENAI_MODEL``, ``HB_OPENAI_API_KEY``.
  Run params that try to set ``base_url``, ``model``, ``api_key`` or ``api_key_env``
  are refused (exit 2).

Params (``/job/params.json`` ``{"params": {...}, "prompt": "...", "task": ...}``; task: ocr, vqa, kie,
page or table):
  max_concurrency (int, default 4, 1..min(32, operator cap))  requests in flight
  timeout_s (int, default 60 or the endpoint's, 1..600)       per request
  max_retries (int, default 4, 0..8)                           per sample, after the first try
  backoff_s (float, default 0.5, 0..10)                        first backoff; doubles, capped at 30 s
  max_tokens (int, default 1024, 1..16384), temperature (float, default 0.0, 0..2)
  system (str, optional)                                        a system message
  image_detail ("auto" | "low" | "high", optional)
  json_mode ("auto" | "on" | "off"; default "auto" for kie, "off" otherwise): "on" and "auto" send
      ``response_format: {"type": "json_object"}``; an endpoint that refuses it (HTTP 400/422)
      fails the sample under "on" with a message saying so, and under "auto" is asked again
      without it, for the rest of the shard (logged once; each line's ``json_mode`` says
      whether the answering request carried it)
The prompt is params.json's ``prompt``, else a default for the task (DEFAULT_PROMPTS).
``{question}`` in the prompt is replaced by the sample's question; a VQA sample whose prompt
has no ``{question}`` gets ``Question: ...`` appended.

Each prediction line carries, besides the contract keys: ``usage``
(``prompt_tokens``, ``completion_tokens``, ``total_tokens`` as the server reports
them, or null), ``attempts``, ``wall_ms`` (including retries and backoff),
``finish_reason`` and ``json_mode``. ``latency_ms`` is the round trip of the request that answered.
"""

from __future__ import annotations

import base64
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from hyperbench_sdk import (
    PredictionWriter,
    done_ids,
    image_mime,
    job_dir,
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
    "kie": (
        "Extract the key information from this document (a receipt, an invoice, a form) as one JSON "
        "object. Use short snake_case keys for the fields the document shows (for example store, date, "
        "total); put repeated entries such as line items in a list of objects (for example items: "
        "[{name, qty, price}]). Copy every value exactly as printed, as a string. Output only the JSON "
        "object, with no commentary."
    ),
    "page": (
        "Convert this document page to Markdown, in reading order. Write titles and section headings "
        "as Markdown headings (# and ##), each paragraph as plain text on its own, lists as Markdown "
        "lists, and every table as an HTML <table> (with <tr>, <th>, <td>, and colspan or rowspan "
        "where cells span) or as a Markdown pipe table. Leave out page furniture such as page numbers. "
        "Output only the Markdown, with no commentary and no code fence."
    ),
    "table": (
        "Convert the table in this image to HTML: one <table> element with a <tr> per row, <th> for "
        "header cells and <td> for the others, colspan and rowspan where cells span, and the cell text "
        "exactly as printed. Output only the HTML, with no commentary and no code fence."
    ),
}
# json_mode "auto" (the default for these tasks) sends response_format {"type": "json_object"}
# and, when the endpoint refuses it (HTTP 400 or 422), asks again without it for the rest of the shard.
JSON_TASKS = frozenset({"kie"})
JSON_MODES = ("auto", "on", "off")
JSON_REJECT_STATUS = frozenset({400, 422})
HARD_MAX_CONCURRENCY = 32
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_BACKOFF_S = 30.0
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FORBIDDEN_PARAMS = ("base_url", "model", "api_key", "api_key_env", "endpoint")
USER_AGENT = "hyperbench-vlm-openai/0.1"


class ConfigError(ValueError):
    """Endpoint or params unusable: the shard cannot start."""


class RequestFailed(RuntimeError):
    """A sample's request failed for good (after the retries, or a non-retryable status)."""

    def __init__(self, message: str, attempts: int = 1, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class JsonModeState:
    """json_mode "auto": on until the endpoint refuses response_format once, then off for the shard."""

    def __init__(self, mode: str) -> None:
        self.enabled = mode in ("auto", "on")
        self.mode = mode
        self.fell_back = False

    def refused(self, reason: str) -> None:
        if not self.fell_back:
            self.fell_back = True
            self.enabled = False
            _log(
                f"the endpoint refused response_format json_object ({reason}); json_mode 'auto': "
                "asking without it from now on (the prompt still asks for JSON)"
            )


@dataclass(frozen=True)
class Endpoint:
    url: str  # .../chat/completions
    model: str
    api_key: str | None
    max_concurrency: int
    timeout_s: float | None


@dataclass(frozen=True)
class Options:
    max_concurrency: int
    timeout_s: float
    max_retries: int
    backoff_s: float
    max_tokens: int
    temperature: float
    system: str | None
    image_detail: str | None
    prompt: str
    task: str
    json_mode: str = "off"


@dataclass
class Outcome:
    prediction: str | None
    error: str | None
    latency_ms: float | None
    wall_ms: float
    attempts: int
    usage: dict[str, int] | None
    finish_reason: str | None
    json_mode: bool = False  # response_format json_object was sent on the answering request


def _log(msg: str) -> None:
    print(f"vlm-openai: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- configuration


def chat_url(base_url: str) -> str:
    url = base_url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"endpoint base_url must be an http(s) URL, not {base_url!r}")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def load_endpoint(env: dict[str, str] | None = None) -> Endpoint:
    """The endpoint from /job/endpoint.json, else from HB_OPENAI_* variables."""
    env = dict(os.environ) if env is None else env
    path = job_dir() / "endpoint.json"
    cfg: dict[str, Any]
    if path.is_file():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is not readable JSON: {e}") from e
        if not isinstance(cfg, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        source = str(path)
    else:
        cfg = {
            "base_url": env.get("HB_OPENAI_BASE_URL", ""),
            "model": env.get("HB_OPENAI_MODEL", ""),
            "api_key_env": "HB_OPENAI_API_KEY",
        }
        source = "HB_OPENAI_BASE_URL / HB_OPENAI_MODEL"
    base_url, model = cfg.get("base_url"), cfg.get("model")
    if not isinstance(base_url, str) or not base_url or not isinstance(model, str) or not model:
        raise ConfigError(
            f"no endpoint configured ({source}): the registered model's server-side configuration "
            "must give base_url and model"
        )
    key = cfg.get("api_key")
    if not key and isinstance(cfg.get("api_key_env"), str):
        key = env.get(cfg["api_key_env"]) or None
    if key is not None and not isinstance(key, str):
        raise ConfigError("api_key must be a string")
    cap = cfg.get("max_concurrency", HARD_MAX_CONCURRENCY)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ConfigError(f"endpoint max_concurrency must be a positive integer, not {cap!r}")
    timeout = cfg.get("timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise ConfigError(f"endpoint timeout_s must be a positive number, not {timeout!r}")
    return Endpoint(
        url=chat_url(base_url),
        model=model,
        api_key=key,
        max_concurrency=min(cap, HARD_MAX_CONCURRENCY),
        timeout_s=None if timeout is None else float(timeout),
    )


def _int(params: dict[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    v = params.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be an integer in {lo}..{hi}, not {v!r}")
    return v


def _float(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    v = params.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise ConfigError(f"{name} must be a number in {lo}..{hi}, not {v!r}")
    return float(v)


def load_options(raw: dict[str, Any], endpoint: Endpoint) -> Options:
    params = raw.get("params") if isinstance(raw.get("params"), dict) else {}
    assert isinstance(params, dict)
    bad = [k for k in FORBIDDEN_PARAMS if k in params]
    if bad:
        raise ConfigError(
            f"params may not set {', '.join(bad)}: the endpoint comes from the registered model's "
            "server-side configuration"
        )
    task = raw.get("task") or "ocr"
    if task not in DEFAULT_PROMPTS:
        raise ConfigError(f"task must be one of {sorted(DEFAULT_PROMPTS)}, not {task!r}")
    prompt = raw.get("prompt") or DEFAULT_PROMPTS[task]
    if not isinstance(prompt, str):
        raise ConfigError("prompt must be a string")
    system = params.get("system")
    if system is not None and not isinstance(system, str):
        raise ConfigError("system must be a string")
    detail = params.get("image_detail")
    if detail is not None and detail not in ("auto", "low", "high"):
        raise ConfigError(f"image_detail must be 'auto', 'low' or 'high', not {detail!r}")
    json_mode = params.get("json_mode", "auto" if task in JSON_TASKS else "off")
    if json_mode not in JSON_MODES:
        raise ConfigError(f"json_mode must be one of {', '.join(map(repr, JSON_MODES))}, not {json_mode!r}")
    default_timeout = int(endpoint.timeout_s) if endpoint.timeout_s else 60
    return Options(
        max_concurrency=_int(
            params, "max_concurrency", min(4, endpoint.max_concurrency), 1, endpoint.max_concurrency
        ),
        timeout_s=float(_int(params, "timeout_s", max(1, min(default_timeout, 600)), 1, 600)),
        max_retries=_int(params, "max_retries", 4, 0, 8),
        backoff_s=_float(params, "backoff_s", 0.5, 0.0, 10.0),
        max_tokens=_int(params, "max_tokens", 1024, 1, 16384),
        temperature=_float(params, "temperature", 0.0, 0.0, 2.0),
        system=system,
        image_detail=detail,
        prompt=prompt,
        task=task,
        json_mode=json_mode,
    )


# ----------------------------------------------------------------------------- one sample


def build_request(
    sample: dict[str, Any], image: bytes, opts: Options, model: str, *, json_object: bool = False
) -> dict[str, Any]:
    url: dict[str, Any] = {
        "url": f"data:{image_mime(image)};base64,{base64.b64encode(image).decode('ascii')}"
    }
    if opts.image_detail:
        url["detail"] = opts.image_detail
    messages: list[dict[str, Any]] = []
    if opts.system:
        messages.append({"role": "system", "content": opts.system})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "text", "text": render_prompt(opts.prompt, sample)},
                {"type": "image_url", "image_url": url},
            ],
        }
    )
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": opts.max_tokens,
        "temperature": opts.temperature,
    }
    if json_object:
        body["response_format"] = {"type": "json_object"}
    return body


def parse_response(body: bytes) -> tuple[str, dict[str, int] | None, str | None]:
    try:
        obj = json.loads(body)
        choice = obj["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RequestFailed(f"unexpected response from the endpoint: {body[:300]!r}") from e
    if isinstance(content, list):  # some servers return content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    usage_raw = obj.get("usage") if isinstance(obj, dict) else None
    usage = None
    if isinstance(usage_raw, dict):
        usage = {
            k: int(usage_raw[k])
            for k in ("prompt_tokens", "completion_tokens", "total_tokens")
            if isinstance(usage_raw.get(k), (int, float)) and not isinstance(usage_raw.get(k), bool)
        }
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return (
        ("" if content is None else str(content)).strip(),
        usage,
        finish if isinstance(finish, str) else None,
    )


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return max(0.0, min(float(value), MAX_BACKOFF_S)) if value is not None else None
    except ValueError:
        return None


def call_endpoint(
    endpoint: Endpoint,
    payload: dict[str, Any],
    opts: Options,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[bytes, float, int]:
    """POST with retries. Returns (body, latency_ms of the answering request, attempts)."""
    data = json.dumps(payload).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
    if endpoint.api_key:
        headers["Authorization"] = f"Bearer {endpoint.api_key}"
    attempt = 0
    while True:
        attempt += 1
        req = urllib.request.Request(endpoint.url, data=data, headers=headers, method="POST")  # noqa: S310
        t0 = time.perf_counter()
        wait_s: float | None = None
        try:
            with urllib.request.urlopen(req, timeout=opts.timeout_s) as resp:  # noqa: S310 - http(s) only
                body = resp.read()
            return body, (time.perf_counter() - t0) * 1000.0, attempt
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode("utf-8", "replace").strip()
            reason = f"HTTP {e.code}: {detail or e.reason}"
            if e.code not in RETRY_STATUS:
                raise RequestFailed(f"{reason} (not retried)", attempt, e.code) from e
            wait_s = _retry_after(e)
        except TimeoutError as e:  # socket.timeout is TimeoutError since 3.10
            reason = f"timed out after {opts.timeout_s:g}s ({e})"
        except urllib.error.URLError as e:
            reason = f"connection failed: {e.reason}"
        except (ConnectionError, OSError) as e:  # reset mid-response, etc.
            reason = f"connection failed: {e}"
        if attempt > opts.max_retries:
            raise RequestFailed(f"{reason}; gave up after {attempt} attempt(s)", attempt)
        if wait_s is None:
            wait_s = min(opts.backoff_s * (2 ** (attempt - 1)), MAX_BACKOFF_S)
            wait_s *= random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not crypto
        sleep(wait_s)


def run_sample(
    sample: dict[str, Any], endpoint: Endpoint, opts: Options, json_state: JsonModeState | None = None
) -> Outcome:
    t0 = time.perf_counter()
    attempts = 0
    json_state = json_state or JsonModeState(opts.json_mode)
    try:
        path = resolve_data_path(sample.get("image", ""))
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise ValueError(f"image larger than {MAX_IMAGE_BYTES} bytes")
        image = path.read_bytes()
        json_object = json_state.enabled
        payload = build_request(sample, image, opts, endpoint.model, json_object=json_object)
        try:
            body, latency_ms, attempts = call_endpoint(endpoint, payload, opts)
        except RequestFailed as e:
            if not json_object or e.status not in JSON_REJECT_STATUS:
                raise
            if opts.json_mode == "on":
                raise RequestFailed(
                    f"{e}; the endpoint refused response_format json_object: set the run param "
                    "json_mode to 'auto' (fall back to the prompt alone) or 'off'",
                    e.attempts,
                    e.status,
                ) from e
            json_state.refused(str(e))
            json_object = False
            payload = build_request(sample, image, opts, endpoint.model, json_object=False)
            body, latency_ms, more = call_endpoint(endpoint, payload, opts)
            attempts = e.attempts + more
        text, usage, finish = parse_response(body)
        wall_ms = (time.perf_counter() - t0) * 1000.0
        return Outcome(text, None, latency_ms, wall_ms, attempts, usage, finish, json_object)
    except Exception as e:  # noqa: BLE001 - a failing sample must not kill the shard
        if isinstance(e, RequestFailed):
            attempts = e.attempts
        msg = f"{type(e).__name__}: {e}"[:2000]
        return Outcome(None, msg, None, (time.perf_counter() - t0) * 1000.0, attempts, None, None)


# ----------------------------------------------------------------------------- the shard


def run(endpoint: Endpoint, opts: Options, progress_interval_s: float = 0.5) -> int:
    samples = read_samples()
    total = len(samples)
    already = done_ids()
    todo = []
    for s in samples:
        if str(s["id"]) not in already:
            already.add(str(s["id"]))
            todo.append(s)
    done = total - len(todo)
    if done:
        _log(f"resuming: {done}/{total} samples already have predictions")
    write_progress(done, total)
    _log(
        f"{len(todo)} samples -> {endpoint.url} model={endpoint.model} "
        f"concurrency={opts.max_concurrency} timeout={opts.timeout_s:g}s retries={opts.max_retries} "
        f"task={opts.task} json_mode={opts.json_mode}"
    )
    json_state = JsonModeState(opts.json_mode)
    errors = 0
    last = time.monotonic()
    with PredictionWriter() as writer, ThreadPoolExecutor(max_workers=opts.max_concurrency) as pool:
        pending: dict[Future[Outcome], dict[str, Any]] = {}
        queue = iter(todo)

        def top_up() -> None:
            # At most 2x the pool in the executor's queue: memory stays flat on big shards.
            while len(pending) < 2 * opts.max_concurrency:
                nxt = next(queue, None)
                if nxt is None:
                    return
                pending[pool.submit(run_sample, nxt, endpoint, opts, json_state)] = nxt

        top_up()
        while pending:
            finished, _ = wait(pending, timeout=progress_interval_s, return_when=FIRST_COMPLETED)
            for fut in finished:
                sample = pending.pop(fut)
                out = fut.result()
                if out.error:
                    errors += 1
                    _log(f"sample {sample['id']!r} failed: {out.error}")
                writer.write(
                    sample["id"],
                    out.prediction,
                    out.latency_ms,
                    out.error,
                    extra={
                        "usage": out.usage,
                        "attempts": out.attempts,
                        "wall_ms": round(out.wall_ms, 3),
                        "finish_reason": out.finish_reason,
                        "json_mode": out.json_mode,
                    },
                )
                done += 1
            top_up()
            now = time.monotonic()
            if now - last >= progress_interval_s:
                write_progress(done, total)
                last = now
    write_progress(done, total, errors=errors)
    _log(f"done: {done}/{total} samples, {errors} errors this session")
    return 0


def main() -> int:
    try:
        endpoint = load_endpoint()
        opts = load_options(read_params(), endpoint)
    except ConfigError as e:
        _log(f"configuration error: {e}")
        return 2
    return run(endpoint, opts)


if __name__ == "__main__":
    sys.exit(main())
