"""Hugging Face Parquet shards (``hf-parquet``): an ``image`` column as ``{bytes, path}``.

Every ``*.parquet`` file of the upload is read in order of its name, in record batches (never a
whole shard in memory). The columns: ``image`` (the ``datasets`` Image feature: a struct with
``bytes``, or plain binary), ``id`` (else the row's number), and the task's ground truth: ``text``
(ocr), ``question`` + ``answers`` (vqa; ``answer`` also accepted), ``html`` (table), ``fields``
(kie: an object or JSON text; CORD's ``ground_truth`` with its ``gt_parse`` works through
``columns``), ``markdown`` (page). ``columns`` maps these names to the file's
(``{"text": "ground_truth", "id": "uid"}``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apps.catalog.importers.common import DatasetWriter, ImportFailure, RowError, find_inputs, vqa_fields

NAME = "hf-parquet"
SUFFIXES = (".parquet",)
BATCH_ROWS = 64


def _wanted(w: DatasetWriter, names: list[str]) -> dict[str, str]:
    """Our name -> the file's column, for the columns this task reads that the file has."""
    o = w.options
    keys = ["image", "id", *(("question", "answers", "answer") if w.task == "vqa" else (w.task_key,))]
    out = {k: o.column(k) for k in keys if o.column(k) in names}
    if "image" not in out:
        raise ImportFailure(f"{NAME}: no {o.column('image')!r} column (columns: {', '.join(names)})")
    truth = ("question",) if w.task == "vqa" else (w.task_key,)
    for k in truth:
        if k not in out:
            raise ImportFailure(
                f"{NAME}: no {o.column(k)!r} column for the {w.task} ground truth "
                f'(columns: {", ".join(names)}); map it with columns, e.g. {{"{k}": "..."}}'
            )
    if w.task == "vqa" and "answers" not in out and "answer" not in out:
        raise ImportFailure(f"{NAME}: no 'answers' (or 'answer') column (columns: {', '.join(names)})")
    return out


def _image(value: Any) -> bytes:
    if isinstance(value, dict):
        data = value.get("bytes")
        if data is None:
            raise RowError(
                f"the image has no bytes (only a path, {value.get('path')!r}): images must be embedded"
            )
        value = data
    if not isinstance(value, bytes | bytearray):
        raise RowError("the image column holds neither bytes nor a {bytes, path} struct")
    return bytes(value)


def _row(row: dict[str, Any], rowno: int, w: DatasetWriter) -> None:
    raw_id = row.get("id")
    sample_id = str(raw_id) if raw_id is not None else str(rowno)
    if w.task == "vqa":
        fields = vqa_fields(row.get("question"), row.get("answers", row.get("answer")))
    else:
        fields = w.ground_truth(row.get(w.task_key))
    w.add(sample_id, w.image_bytes(_image(row.get("image"))), fields)


def import_parquet(source: Path, w: DatasetWriter) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rowno = 0
    for path in find_inputs(source, SUFFIXES, NAME):
        try:
            shard = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as e:
            raise ImportFailure(f"{NAME}: {path.name} is not a Parquet file ({e})") from None
        wanted = _wanted(w, list(shard.schema_arrow.names))
        rename = {col: ours for ours, col in wanted.items()}
        try:
            for batch in shard.iter_batches(batch_size=BATCH_ROWS, columns=list(wanted.values())):
                for raw in batch.to_pylist():
                    rowno += 1
                    try:
                        _row({rename[k]: v for k, v in raw.items()}, rowno, w)
                    except RowError as e:
                        w.problem(f"{path.name} row {rowno}", str(e))
        except pa.ArrowException as e:
            raise ImportFailure(f"{NAME}: {path.name} cannot be read after row {rowno} ({e})") from None
