"""Small inputs in the import formats, built by the tests (tests/test_importers.py converts them
directly, tests/test_dataset_upload.py uploads them through the API)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image


def png(color: str = "white", size: tuple[int, int] = (40, 20)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def hf_parquet_shard(path: Path, shard: int, colors: list[str]) -> Path:
    """A Hugging Face Parquet shard: an ``image`` struct ``{bytes, path}``, ``uid`` and ``ground_truth``
    (to be mapped with columns ``{"text": "ground_truth", "id": "uid"}``); ids ``<shard>-<i>``,
    texts ``text <color>``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "image": [{"bytes": png(c), "path": f"{c}.png"} for c in colors],
            "uid": [f"{shard}-{i}" for i in range(len(colors))],
            "ground_truth": [f"text {c}" for c in colors],
        }
    )
    pq.write_table(table, path, row_group_size=1)
    return path


def docvqa_folder(src: Path) -> list[dict[str, Any]]:
    """``src/val_v1.0.json`` with two questions (ids 7 and 8) on ``src/documents/d1.png``; the entries."""
    (src / "documents").mkdir(parents=True)
    (src / "documents" / "d1.png").write_bytes(png("red"))
    data: list[dict[str, Any]] = [
        {"questionId": 7, "question": "Date?", "image": "documents/d1.png", "answers": ["1 May", "May 1"]},
        {"questionId": 8, "question": "Who?", "image": "documents/d1.png", "answers": ["Ann"]},
    ]
    (src / "val_v1.0.json").write_text(json.dumps({"dataset_name": "docvqa", "data": data}))
    return data


PUBTABNET_LINE: dict[str, Any] = {
    "filename": "PMC1_003_00.png",
    "split": "val",
    "imgid": 3,
    "html": {
        "structure": {
            "tokens": [
                "<thead>",
                "<tr>",
                "<td>",
                "</td>",
                "<td",
                ' colspan="2"',
                ">",
                "</td>",
                "</tr>",
                "</thead>",
                "<tbody>",
                "<tr>",
                "<td>",
                "</td>",
                "<td>",
                "</td>",
                "<td>",
                "</td>",
                "</tr>",
                "</tbody>",
            ],
        },
        "cells": [
            {"tokens": ["<b>", "N", "</b>"], "bbox": [1, 2, 3, 4]},
            {"tokens": ["a", "<", "b"], "bbox": [1, 2, 3, 4]},
            {"tokens": []},
            {"tokens": ["1", "&"], "bbox": [1, 2, 3, 4]},
            {"tokens": ["2"], "bbox": [1, 2, 3, 4]},
        ],
    },
}


def pubtabnet_folder(src: Path) -> None:
    """``src/PubTabNet_2.0.0.jsonl``: :data:`PUBTABNET_LINE` (val, imgid 3, its image under ``val/``)
    and the same line in the train split (imgid 5), which ``columns {"split": "val"}`` leaves out."""
    (src / "val").mkdir(parents=True)
    (src / "val" / "PMC1_003_00.png").write_bytes(png())
    lines = [PUBTABNET_LINE, {**PUBTABNET_LINE, "split": "train", "imgid": 5}]
    (src / "PubTabNet_2.0.0.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


KIE_NESTED = {"menu": [{"nm": "Tea", "price": "3.00"}], "total": {"total_price": "3.00"}}


def kie_folder(src: Path) -> None:
    """``src/kie.jsonl``: r1 with flat (SROIE) fields, and an id-less line with CORD's nested fields
    wrapped as ``{"gt_parse": ...}`` JSON text (:data:`KIE_NESTED`); images under ``src/img/``."""
    (src / "img").mkdir(parents=True)
    (src / "img" / "r1.png").write_bytes(png())
    (src / "img" / "r2.png").write_bytes(png("gray"))
    lines = [
        {"id": "r1", "image": "img/r1.png", "fields": {"company": "ACME", "total": "9.90"}},
        {"image": "img/r2.png", "fields": json.dumps({"gt_parse": KIE_NESTED})},
    ]
    (src / "kie.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def pdf_folder(src: Path) -> None:
    """``src/report.pdf``, three 200x100 pt pages (white, red, blue), and its sidecar
    ``report.jsonl`` with the Markdown of pages 1 and 3 (page 2 has none, so it is skipped)."""
    src.mkdir(parents=True, exist_ok=True)
    pages = [Image.new("RGB", (200, 100), c) for c in ("white", "red", "blue")]
    pages[0].save(src / "report.pdf", save_all=True, append_images=pages[1:], resolution=72)
    sidecar = [{"page": 1, "markdown": "# One"}, {"page": 3, "markdown": "Three"}]
    (src / "report.jsonl").write_text("\n".join(json.dumps(x) for x in sidecar) + "\n")
