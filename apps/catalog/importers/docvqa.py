"""DocVQA-style JSON (``docvqa-json``): ``{"data": [{"questionId", "question", "image", "answers"}]}``.

The annotation file of the DocVQA challenge (``train_v1.0.json``...): one entry per question,
``image`` a path relative to the JSON file (``documents/xyz.png``), ``answers`` a list. An image
several questions share is stored once. Image paths that leave the upload (absolute, ``..``, a
symlink) are refused with the entry's number. The JSON is read whole (the stdlib cannot stream
it), under ``HYPERBENCH_IMPORT_MAX_JSON_BYTES``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apps.catalog.importers.common import (
    DatasetWriter,
    ImportFailure,
    RowError,
    one_input,
    read_json_capped,
    safe_relative,
    vqa_fields,
)

NAME = "docvqa-json"


def import_docvqa(source: Path, w: DatasetWriter) -> None:
    path = one_input(source, (".json",), NAME)
    doc = read_json_capped(path, w.limits, NAME)
    entries = doc.get("data") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ImportFailure(f"{NAME}: {path.name} must hold a list under 'data' (DocVQA's layout).")
    if w.task != "vqa":
        raise ImportFailure(f"{NAME}: DocVQA annotations are a vqa dataset, not {w.task}.")
    root = path.parent
    o = w.options
    stored: dict[Path, dict[str, Any]] = {}
    for n, entry in enumerate(entries, start=1):
        try:
            if not isinstance(entry, dict):
                raise RowError("must be a JSON object")
            qid = entry.get(o.column("id", "questionId"))
            if qid is None or isinstance(qid, dict | list):
                raise RowError(f"missing {o.column('id', 'questionId')!r}")
            fields = vqa_fields(entry.get(o.column("question")), entry.get(o.column("answers")))
            image = entry.get(o.column("image"))
            src = safe_relative(image if isinstance(image, str) else "", root)
            if src not in stored:
                stored[src] = w.image_file(src)
            w.add(str(qid), stored[src], fields)
        except RowError as e:
            w.problem(f"{path.name} entry {n}", str(e))
