"""HyperBench model image: Tesseract 5 (Debian ``tesseract-ocr``, CPU), container contract v1.

The tesseract CLI is called once per sample through ``subprocess`` with a
timeout (no Python binding, no extra dependency). prediction = the recognised
lines, top to bottom, blank lines dropped, joined by ``"\\n"``.

Params (``/job/params.json`` ``{"params": {...}}``, all optional, allow-listed):
  psm (int, default 3)        page segmentation mode: one of PSM_ALLOWED
  lang (str, default "eng")   installed traineddata names joined by "+", e.g. "eng"
  timeout_s (int, default 60) per-sample limit, 1..600
A value outside the allow-list fails the shard at start with a clear message
(a configuration error, not a sample error).

Measured on the 60 sample documents (scripts/make_sample_dataset.py, seed 7), 2 cores:
corpus CER 0.29 with psm 3 (Tesseract's default, which returns nothing for some
single lines and tables), 0.11 with psm 6 (one uniform block), 0.15 with psm 4;
about 0.2-0.35 s per page. Register it with ``{"psm": 6}`` for snippet-like documents.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from hyperbench_sdk import read_params, run_model

TESSERACT = "tesseract"
TESSDATA_GLOB = "/usr/share/tesseract-ocr/*/tessdata/*.traineddata"
PSM_ALLOWED = (1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13)  # 0 = OSD only, 2 = not implemented
MAX_LANGS = 4
MAX_TIMEOUT_S = 600
_LANG_RE = re.compile(r"^[A-Za-z0-9_]{2,32}$")


class ParamError(ValueError):
    """A param outside the allow-list."""


def installed_langs() -> list[str]:
    names = {Path(p).name.removesuffix(".traineddata") for p in glob.glob(TESSDATA_GLOB)}
    names.discard("osd")
    return sorted(names)


def model_params(raw: dict[str, Any]) -> dict[str, Any]:
    """The model's params: the ``params`` object of params.json (or the file itself, hand-run)."""
    inner = raw.get("params")
    return inner if isinstance(inner, dict) else raw


def options(raw: dict[str, Any]) -> tuple[int, str, int]:
    """(psm, lang, timeout_s), checked against the allow-lists."""
    params = model_params(raw)
    psm = params.get("psm", 3)
    if isinstance(psm, bool) or not isinstance(psm, int) or psm not in PSM_ALLOWED:
        raise ParamError(f"psm must be one of {list(PSM_ALLOWED)}, not {psm!r}")
    lang = params.get("lang", "eng")
    available = installed_langs()
    if not isinstance(lang, str) or not lang:
        raise ParamError(f"lang must be a string such as 'eng', not {lang!r}")
    parts = lang.split("+")
    if len(parts) > MAX_LANGS or any(not _LANG_RE.match(p) or p not in available for p in parts):
        raise ParamError(f"lang {lang!r} is not available; installed: {'+'.join(available) or 'none'}")
    timeout_s = params.get("timeout_s", 60)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or not 1 <= timeout_s <= MAX_TIMEOUT_S:
        raise ParamError(f"timeout_s must be an integer in 1..{MAX_TIMEOUT_S}, not {timeout_s!r}")
    return psm, lang, timeout_s


def tesseract(image: Path, psm: int, lang: str, timeout_s: int) -> str:
    cmd = [TESSERACT, str(image), "stdout", "--psm", str(psm), "-l", lang]
    env = {**os.environ, "OMP_THREAD_LIMIT": os.environ.get("OMP_THREAD_LIMIT", "1")}
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired as e:
        raise TimeoutError(f"tesseract took longer than {timeout_s}s") from e
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:])
        raise RuntimeError(f"tesseract exited {proc.returncode}: {tail or 'no message'}")
    text = proc.stdout.decode("utf-8", "replace").replace("\x0c", "\n")
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def predict(sample: dict[str, Any], image_path: Path, params: dict[str, Any]) -> str:
    if not image_path.is_file():
        raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
    psm, lang, timeout_s = options(params)
    return tesseract(image_path, psm, lang, timeout_s)


def warmup(params: dict[str, Any]) -> None:
    """One run on a blank PGM in /tmp: loads the traineddata before any sample is timed."""
    psm, lang, timeout_s = options(params)
    blank = Path(os.environ.get("TMPDIR", "/tmp")) / "hb-warmup.pgm"
    blank.write_bytes(b"P5 64 32 255\n" + b"\xff" * (64 * 32))
    try:
        tesseract(blank, psm, lang, timeout_s)
    finally:
        blank.unlink(missing_ok=True)


def main() -> int:
    try:
        options(read_params())
    except ParamError as e:
        print(f"ocr-tesseract: bad params: {e}", file=sys.stderr, flush=True)
        return 2
    return run_model(predict, warmup=warmup)


if __name__ == "__main__":
    sys.exit(main())
