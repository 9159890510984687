"""HyperBench model image: RapidOCR (PP-OCR ONNX; CPU, or CUDA with onnxruntime-gpu), container contract v1.

prediction = the recognised lines in reading order: rows top to bottom, boxes of
one row left to right joined by a space, rows joined by "\\n".

Params (/job/params.json, all optional):
  text_score (float, default 0.5)  minimum recognition score of a line
  use_cls (bool, default true)     run the text-direction classifier
  threads (int, default 0 = onnxruntime's choice)
  det_limit_side_len (int, default 736), det_limit_type ("min" | "max", default "min"):
      detector input size; "max" with 960 is faster on large pages, "min" (RapidOCR's
      default) upscales small images so their shorter side is at least the limit
  device ("auto" | "cpu" | "cuda", default "auto"): the onnxruntime execution provider;
      "auto" takes CUDA when onnxruntime offers CUDAExecutionProvider and the worker
      granted a GPU, else CPU (hyperbench_sdk.providers). The provider asked for and the one
      the sessions run on are logged to stderr (the run keeps the container log).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import rapidocr
from hyperbench_sdk import run_model
from hyperbench_sdk.providers import engine_params, gpu_visible, select_provider
from rapidocr import RapidOCR

MODELS = Path(rapidocr.__file__).resolve().parent / "models"
DET_MODEL = MODELS / "PP-OCRv6_det_small.onnx"
REC_MODEL = MODELS / "PP-OCRv6_rec_small.onnx"
CLS_MODEL = MODELS / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"

Box = list[list[float]]

_engine: RapidOCR | None = None


def make_engine(params: dict[str, Any]) -> RapidOCR:
    for model in (DET_MODEL, REC_MODEL, CLS_MODEL):
        if not model.is_file():
            raise FileNotFoundError(f"bundled model missing: {model}")
    threads = int(params.get("threads", 0) or 0)
    cfg: dict[str, Any] = {
        "Global.log_level": "warning",
        "Global.text_score": float(params.get("text_score", 0.5)),
        "Global.use_cls": bool(params.get("use_cls", True)),
        # Explicit paths to the models inside the wheel: RapidOCR never downloads.
        "Det.model_path": str(DET_MODEL),
        "Rec.model_path": str(REC_MODEL),
        "Cls.model_path": str(CLS_MODEL),
    }
    if "det_limit_side_len" in params:
        cfg["Det.limit_side_len"] = int(params["det_limit_side_len"])
    if "det_limit_type" in params:
        if params["det_limit_type"] not in ("min", "max"):
            raise ValueError("det_limit_type must be 'min' or 'max'")
        cfg["Det.limit_type"] = str(params["det_limit_type"])
    if threads > 0:
        cfg["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        cfg["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
    available = list(onnxruntime.get_available_providers())
    provider = select_provider(available, device=str(params.get("device", "auto")), has_gpu=gpu_visible())
    cfg.update(engine_params(provider))
    _log(f"onnxruntime {onnxruntime.__version__} offers {available}; selected {provider}")
    return RapidOCR(params=cfg)


def _log(msg: str) -> None:
    print(f"ocr-rapidocr: {msg}", file=sys.stderr, flush=True)


def session_providers(eng: RapidOCR) -> dict[str, str]:
    """The provider each loaded ONNX session really runs on (onnxruntime may fall back to CPU)."""
    out: dict[str, str] = {}
    for part in ("text_det", "text_cls", "text_rec"):
        ort_session = getattr(getattr(getattr(eng, part, None), "session", None), "session", None)
        if ort_session is not None and hasattr(ort_session, "get_providers"):
            out[part.removeprefix("text_")] = str(ort_session.get_providers()[0])
    return out


def engine(params: dict[str, Any]) -> RapidOCR:
    global _engine
    if _engine is None:
        # The worker writes {"params": {...}, "prompt", "task"}; a hand-run may pass the params bare.
        inner = params.get("params")
        _engine = make_engine(inner if isinstance(inner, dict) else params)
    return _engine


def warmup(params: dict[str, Any]) -> None:
    eng = engine(params)
    img = np.full((96, 320, 3), 255, dtype=np.uint8)
    img[30:66, 20:300:12] = 0  # a few dark strokes so det and rec both run
    eng(img)
    # After the first call every session exists: record where the engine really runs.
    _log(f"sessions run on {session_providers(eng) or 'unknown providers'}")


def reading_order(boxes: list[Box], texts: list[str]) -> str:
    """Group boxes into rows by vertical overlap, then order rows top-down and boxes left-right."""
    items = []
    for box, text in zip(boxes, texts, strict=False):
        if not text or not text.strip():
            continue
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        items.append((min(ys), max(ys), min(xs), text.strip()))
    items.sort(key=lambda it: ((it[0] + it[1]) / 2, it[2]))
    rows: list[dict[str, Any]] = []
    for top, bottom, left, text in items:
        center = (top + bottom) / 2
        height = max(bottom - top, 1.0)
        placed = False
        for row in rows:
            row_h = max(row["bottom"] - row["top"], 1.0)
            overlap = min(bottom, row["bottom"]) - max(top, row["top"])
            # Same row: the centre lies inside the row band and the overlap is
            # at least half the smaller height.
            if row["top"] <= center <= row["bottom"] and overlap >= 0.5 * min(height, row_h):
                row["items"].append((left, text))
                row["top"] = min(row["top"], top)
                row["bottom"] = max(row["bottom"], bottom)
                placed = True
                break
        if not placed:
            rows.append({"top": top, "bottom": bottom, "items": [(left, text)]})
    rows.sort(key=lambda r: (r["top"] + r["bottom"]) / 2)
    return "\n".join(" ".join(t for _, t in sorted(r["items"], key=lambda it: it[0])) for r in rows)


def predict(sample: dict[str, Any], image_path: Path, params: dict[str, Any]) -> str:
    if not image_path.is_file():
        raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
    result = engine(params)(str(image_path))
    boxes = getattr(result, "boxes", None)
    texts = getattr(result, "txts", None)
    if boxes is None or texts is None:
        return ""  # nothing detected: an empty page
    return reading_order(np.asarray(boxes).tolist(), [str(t) for t in texts])


def main() -> int:
    return run_model(predict, warmup=warmup)


if __name__ == "__main__":
    sys.exit(main())
