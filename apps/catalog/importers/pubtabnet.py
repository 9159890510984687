"""PubTabNet JSONL (``pubtabnet-jsonl``): a table's structure tokens and cells, to its HTML.

One line per table: ``filename``, ``split`` and ``html`` = ``{"structure": {"tokens": [...]},
"cells": [{"tokens": [...], "bbox": [...]}]}``. The HTML is built exactly as PubTabNet's own
README builds it (``format_html``): each non-empty cell's tokens are joined (single-character
tokens HTML-escaped) and inserted after its ``<td>`` or ``>`` (the end of ``<td colspan=...>``)
in the structure, and the whole is wrapped in ``<html><body><table>...</table></body></html>``.
The image is ``<split>/<filename>`` or ``<filename>`` next to the JSONL file. ``columns``
``{"split": "val"}`` keeps only that split's lines. Read one line at a time.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from apps.catalog.importers.common import DatasetWriter, ImportFailure, RowError, one_input, safe_relative

NAME = "pubtabnet-jsonl"


def format_html(html: dict[str, Any]) -> str:
    """PubTabNet's ``format_html`` (its README), on the ``html`` object of one line."""
    structure = html.get("structure") if isinstance(html, dict) else None
    tokens = structure.get("tokens") if isinstance(structure, dict) else None
    cells = html.get("cells") if isinstance(html, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise RowError("html.structure.tokens must be a list of strings")
    if not isinstance(cells, list):
        raise RowError("html.cells must be a list")
    code = list(tokens)
    to_insert = [i for i, tag in enumerate(code) if tag in ("<td>", ">")]
    if len(to_insert) != len(cells):
        raise RowError(f"the structure has {len(to_insert)} cells and 'cells' has {len(cells)}")
    for i, cell in zip(to_insert[::-1], cells[::-1], strict=True):
        cell_tokens = cell.get("tokens") if isinstance(cell, dict) else None
        if not isinstance(cell_tokens, list) or not all(isinstance(t, str) for t in cell_tokens):
            raise RowError("every cell needs 'tokens', a list of strings")
        if cell_tokens:
            code.insert(i + 1, "".join(escape(t) if len(t) == 1 else t for t in cell_tokens))
    return "<html><body><table>{}</table></body></html>".format("".join(code))


def import_pubtabnet(source: Path, w: DatasetWriter) -> None:
    path = one_input(source, (".jsonl",), NAME)
    if w.task != "table":
        raise ImportFailure(f"{NAME}: PubTabNet is a table dataset, not {w.task}.")
    split = w.options.columns.get("split")
    root = path.parent
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                _line(raw, split, root, w)
            except RowError as e:
                w.problem(f"{path.name} line {lineno}", str(e))


def _line(raw: bytes, split: str | None, root: Path, w: DatasetWriter) -> None:
    try:
        entry = json.loads(raw)
    except (ValueError, RecursionError):
        raise RowError("not a JSON object") from None
    if not isinstance(entry, dict):
        raise RowError("not a JSON object")
    if split and entry.get("split") != split:
        return
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise RowError("missing 'filename'")
    html = format_html(entry.get("html") or {})
    part = entry.get("split")
    candidates = [f"{part}/{filename}"] if isinstance(part, str) and part else []
    src = safe_relative(next((n for n in candidates if (root / n).exists()), filename), root)
    imgid = entry.get("imgid")
    sample_id = str(imgid) if isinstance(imgid, int | str) and str(imgid) else filename
    w.add(sample_id, w.image_file(src), {"html": html})
