"""PDFs (``pdf``): each page rendered to a PNG with pypdfium2, one sample per page.

Every ``*.pdf`` of the upload, in path order; each page is rendered at ``dpi`` (``columns``
``{"dpi": "200"}``, else ``HYPERBENCH_IMPORT_PDF_DPI``), refused before rendering when the
rendered page would be over the pixel cap. The sample id is ``<pdf path without .pdf>/p<n>``
(n from 1). The ground truth per page comes from a sidecar ``<name>.jsonl`` beside the PDF, one
line per sample: ``{"page": n, ...}`` with the task's field (``text``, ``markdown``, ``html``,
``fields``, or ``question`` + ``answers``; several vqa lines may name the same page). Without a
sidecar, for ocr and page, the ground truth is the PDF's own text layer (a born-digital PDF);
a page without a line in the sidecar is skipped.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from apps.catalog.importers.common import (
    DatasetWriter,
    ImportFailure,
    RowError,
    find_inputs,
    vqa_fields,
)

NAME = "pdf"


def _dpi(w: DatasetWriter) -> int:
    raw = w.options.columns.get("dpi")
    if raw is None:
        return w.limits.pdf_dpi
    if not str(raw).isdigit() or not 36 <= int(raw) <= 600:
        raise ImportFailure(f"{NAME}: dpi must be an integer from 36 to 600, not {raw!r}.")
    return int(raw)


def _sidecar(pdf: Path, w: DatasetWriter) -> dict[int, list[dict[str, Any]]] | None:
    path = pdf.with_suffix(".jsonl")
    if not path.is_file():
        if w.task not in ("ocr", "page"):
            raise ImportFailure(
                f"{NAME}: {pdf.name} needs a sidecar {path.name} with the {w.task} ground truth."
            )
        return None
    pages: dict[int, list[dict[str, Any]]] = {}
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
            except (ValueError, RecursionError):
                line = None
            page = line.get("page") if isinstance(line, dict) else None
            if not isinstance(page, int) or isinstance(page, bool) or page < 1:
                w.problem(f"{path.name} line {lineno}", "must be an object with 'page', a number from 1")
                continue
            pages.setdefault(page, []).append(line)
    return pages


def _truth(line: dict[str, Any], w: DatasetWriter) -> dict[str, Any]:
    if w.task == "vqa":
        return vqa_fields(line.get("question"), line.get("answers", line.get("answer")))
    return w.ground_truth(line.get(w.task_key))


def _render(page: Any, dpi: int, w: DatasetWriter) -> bytes:
    width, height = page.get_size()
    scale = dpi / 72
    pixels = int(width * scale) * int(height * scale)
    if pixels > w.limits.max_image_pixels:
        raise RowError(
            f"at {dpi} dpi the page would be {int(width * scale)}x{int(height * scale)} pixels, over the "
            f"cap of {w.limits.max_image_pixels} (HYPERBENCH_IMPORT_MAX_IMAGE_PIXELS); lower the dpi"
        )
    image = page.render(scale=scale).to_pil()
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def import_pdf(source: Path, w: DatasetWriter) -> None:
    import pypdfium2 as pdfium

    dpi = _dpi(w)
    for pdf_path in find_inputs(source, (".pdf",), NAME):
        rel = pdf_path.relative_to(source).with_suffix("").as_posix() if source.is_dir() else pdf_path.stem
        sidecar = _sidecar(pdf_path, w)
        try:
            pdf = pdfium.PdfDocument(pdf_path)
        except pdfium.PdfiumError as e:
            raise ImportFailure(f"{NAME}: {pdf_path.name} is not a PDF pypdfium2 can open ({e})") from None
        try:
            if len(pdf) > w.limits.max_pdf_pages:
                raise ImportFailure(
                    f"{NAME}: {pdf_path.name} has {len(pdf)} pages, over the cap of "
                    f"{w.limits.max_pdf_pages} (HYPERBENCH_IMPORT_MAX_PDF_PAGES)."
                )
            for index in range(len(pdf)):
                try:
                    _page(pdf, index, rel, sidecar, dpi, w)
                except RowError as e:
                    w.problem(f"{pdf_path.name} page {index + 1}", str(e))
        finally:
            pdf.close()


def _page(
    pdf: Any,
    index: int,
    rel: str,
    sidecar: dict[int, list[dict[str, Any]]] | None,
    dpi: int,
    w: DatasetWriter,
) -> None:
    number = index + 1
    if sidecar is not None and number not in sidecar:
        return
    page = pdf[index]
    try:
        if sidecar is None:
            textpage = page.get_textpage()
            lines = [{w.task_key: textpage.get_text_range().replace("\r\n", "\n").strip()}]
            textpage.close()
        else:
            lines = sidecar[number]
        stored = w.image_bytes(_render(page, dpi, w))
    finally:
        page.close()
    for k, line in enumerate(lines):
        suffix = "" if len(lines) == 1 else f"-{k + 1}"
        w.add(f"{rel}/p{number}{suffix}", stored, _truth(line, w))
