"""HyperBench model image template: copy this directory, then replace ``predict``.

The SDK (``hyperbench_sdk.run_model``) does the contract for you: it reads
``/job/input.jsonl`` and ``/job/params.json``, resolves each sample's image
under ``/data`` (refusing paths that leave it), times every call, turns an
exception into that sample's ``error``, skips samples already in
``predictions.jsonl`` (resume), and writes ``predictions.jsonl`` and
``progress.json``. See docs/byom.md.

This placeholder "model" answers with the image's pixel size, read from the
PNG/JPEG header, so it runs anywhere and shows where a real model plugs in.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

from hyperbench_sdk import run_model

_model: Any = None


def model_params(raw: dict[str, Any]) -> dict[str, Any]:
    """The model's own params: the ``params`` object of /job/params.json."""
    inner = raw.get("params")
    return inner if isinstance(inner, dict) else {}


def load_model(params: dict[str, Any]) -> Any:
    """Load weights once (from files inside the image: the container has no network)."""
    return {"name": "image-size", "params": params}


def warmup(raw_params: dict[str, Any]) -> None:
    """Runs once before the first sample is timed: load the model here."""
    global _model
    _model = load_model(model_params(raw_params))


def image_size(data: bytes) -> tuple[int, int]:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if data.startswith(b"\xff\xd8"):
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                break
            marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
            if marker in (0xC0, 0xC1, 0xC2):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return int(width), int(height)
            i += 2 + length
    raise ValueError("not a PNG or JPEG image")


def predict(sample: dict[str, Any], image_path: Path, raw_params: dict[str, Any]) -> str:
    """One sample -> the prediction string. Raise to record an error for this sample only.

    ``sample`` is the input line (``id``, ``image``, and ``question`` for VQA);
    ``image_path`` is the image under /data; ``raw_params`` is /job/params.json
    (``{"params": {...}, "prompt": "...", "task": "ocr" | "vqa"}``).
    """
    # Replace from here with your model: e.g. return _model.generate(image_path, prompt)
    width, height = image_size(image_path.read_bytes())
    return f"{width}x{height}"


def main() -> int:
    return run_model(predict, warmup=warmup)


if __name__ == "__main__":
    sys.exit(main())
