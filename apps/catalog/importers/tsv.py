"""VLMEvalKit TSV (``vlmevalkit-tsv``): one sample a row, the image inline as base64.

The columns are VLMEvalKit's: ``index`` (the sample id), ``image`` (base64; a value of at most 64
characters is the ``index`` of another row whose image it shares, as VLMEvalKit writes repeated
images), ``question`` and ``answer``. An answer VLMEvalKit wrote as a list (``"['a', 'b']"``)
becomes the list of accepted answers (vqa); for the other tasks ``answer`` is the ground truth
(ocr: the text). ``columns`` renames any of them (``{"answer": "gt"}``). Rows are read one at a
time (the csv module, so a quoted field may span lines); a multi-image row is refused.
"""

from __future__ import annotations

import base64
import binascii
import csv
import sys
from pathlib import Path
from typing import Any

from apps.catalog.importers.common import (
    DatasetWriter,
    ImportFailure,
    RowError,
    one_input,
    vqa_fields,
)

NAME = "vlmevalkit-tsv"
SUFFIXES = (".tsv",)


def _field_limit(max_image_bytes: int) -> None:
    """Let a row hold one base64 image under the cap (the csv module's limit is process-wide)."""
    need = max_image_bytes * 4 // 3 + 1024
    if csv.field_size_limit() < need:
        csv.field_size_limit(min(need, sys.maxsize))


def _decode(value: str, w: DatasetWriter) -> bytes:
    if len(value) * 3 // 4 > w.limits.max_image_bytes + 3:
        raise RowError(
            f"base64 image of about {len(value) * 3 // 4} bytes is over the cap of "
            f"{w.limits.max_image_bytes} bytes (HYPERBENCH_IMPORT_MAX_IMAGE_BYTES)"
        )
    try:
        return base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise RowError("the image column is not base64") from None


def _fields(row: dict[str, Any], w: DatasetWriter) -> dict[str, Any]:
    o = w.options
    answer = row.get(o.column("answer"))
    if w.task == "vqa":
        return vqa_fields(row.get(o.column("question")), answer)
    return w.ground_truth(row.get(o.column(w.task_key), answer))


def import_tsv(source: Path, w: DatasetWriter) -> None:
    path = one_input(source, SUFFIXES, NAME)
    _field_limit(w.limits.max_image_bytes)
    o = w.options
    images: dict[str, dict[str, Any]] = {}  # index -> stored image (for rows that refer to it)
    waiting: list[tuple[int, str, str, dict[str, Any]]] = []  # rows whose image is a later row's
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        header = reader.fieldnames or []
        for col in (o.column("index"), o.column("image")):
            if col not in header:
                raise ImportFailure(
                    f"{NAME}: {path.name} has no {col!r} column (columns: {', '.join(header)})"
                )
        try:
            for rowno, row in enumerate(reader, start=2):  # line 1 is the header
                _row(rowno, row, w, images, waiting)
        except UnicodeDecodeError:
            raise ImportFailure(f"{NAME}: {path.name} is not UTF-8 text") from None
        except csv.Error as e:
            raise ImportFailure(f"{NAME}: {path.name} line {reader.line_num}: {e}") from None
    for rowno, sample_id, ref, fields in waiting:
        where = f"{path.name} row {rowno}"
        if ref not in images:
            w.problem(where, f"the image refers to index {ref!r}, which has no image of its own")
            continue
        try:
            w.add(sample_id, images[ref], fields)
        except RowError as e:
            w.problem(where, str(e))


def _row(
    rowno: int,
    row: dict[str, Any],
    w: DatasetWriter,
    images: dict[str, dict[str, Any]],
    waiting: list[tuple[int, str, str, dict[str, Any]]],
) -> None:
    o = w.options
    where = f"row {rowno}"
    try:
        sample_id = str(row.get(o.column("index")) or "").strip()
        if not sample_id:
            raise RowError(f"empty {o.column('index')!r}")
        value = str(row.get(o.column("image")) or "")
        fields = _fields(row, w)
        if value.startswith("["):
            raise RowError("a multi-image row (a list of images) is not supported: one image per sample")
        if len(value) <= 64:
            ref = value.strip()
            if ref in images:
                w.add(sample_id, images[ref], fields)
            else:
                waiting.append((rowno, sample_id, ref, fields))
            return
        stored = w.image_bytes(_decode(value, w))
        images[sample_id] = stored
        w.add(sample_id, stored, fields)
    except RowError as e:
        w.problem(where, str(e))
