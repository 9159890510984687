"""CORD/SROIE-style key information (``kie-json``): an image and its fields per sample.

Either a JSON Lines file (one object a line, streamed) or a JSON array (read whole, under
``HYPERBENCH_IMPORT_MAX_JSON_BYTES``), each object ``{"id", "image", "fields"}``: ``image`` a
path relative to the annotation file, ``fields`` the ground truth, flat (SROIE: company, date,
address, total) or nested with lists (CORD), as an object or as JSON text; Donut's
``{"gt_parse": {...}}`` wrapper (CORD's ``ground_truth``) is unwrapped. ``columns`` renames the
keys (``{"fields": "ground_truth", "image": "file"}``). Without an ``id``, the image's path is
the id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from apps.catalog.importers.common import (
    DatasetWriter,
    ImportFailure,
    RowError,
    find_inputs,
    read_json_capped,
    safe_relative,
)

NAME = "kie-json"


def _entries(path: Path, w: DatasetWriter) -> Iterator[tuple[str, Any]]:
    if path.suffix.lower() == ".jsonl":
        with open(path, "rb") as handle:
            for lineno, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield f"{path.name} line {lineno}", json.loads(raw)
                except (ValueError, RecursionError):
                    yield f"{path.name} line {lineno}", None
        return
    doc = read_json_capped(path, w.limits, NAME)
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if not isinstance(doc, list):
        raise ImportFailure(f"{NAME}: {path.name} must hold a JSON array of samples (or JSON Lines).")
    for n, entry in enumerate(doc, start=1):
        yield f"{path.name} entry {n}", entry


def import_kie(source: Path, w: DatasetWriter) -> None:
    if w.task != "kie":
        raise ImportFailure(f"{NAME}: key information is a kie dataset, not {w.task}.")
    files = find_inputs(source, (".jsonl", ".json"), NAME)
    if source.is_dir() and len(files) > 1:
        names = ", ".join(p.name for p in files[:5])
        raise ImportFailure(f"{NAME}: expected one annotation file (.json or .jsonl), found {names}")
    path = files[0]
    o = w.options
    for where, entry in _entries(path, w):
        try:
            if not isinstance(entry, dict):
                raise RowError("must be a JSON object")
            image = entry.get(o.column("image"))
            src = safe_relative(image if isinstance(image, str) else "", path.parent)
            fields = w.ground_truth(entry.get(o.column("fields")))
            raw_id = entry.get(o.column("id"))
            sample_id = str(raw_id) if isinstance(raw_id, str | int) else str(image)
            w.add(sample_id, w.image_file(src), fields)
        except RowError as e:
            w.problem(where, str(e))
