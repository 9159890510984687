"""Each importer on a tiny file the test builds: the layout it writes validates (with hashes),
and hostile or bad rows are refused with their row number (apps/catalog/importers/)."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from apps.catalog.importers import ImportFailure, Limits, Options, run_import
from apps.catalog.importers.pubtabnet import format_html
from tests.import_fixtures import (
    KIE_NESTED,
    PUBTABNET_LINE,
    docvqa_folder,
    hf_parquet_shard,
    kie_folder,
    pdf_folder,
    png,
    pubtabnet_folder,
)
from worker.manifest import iter_samples, validate_local

LIMITS = Limits(max_image_bytes=1_000_000, max_image_pixels=1_000_000, pdf_dpi=72)


def opts(task: str, columns: dict[str, str] | None = None, name: str = "imp") -> Options:
    return Options(name=name, version="1", task=task, columns=columns or {})


def imported(fmt: str, source: Path, out: Path, options: Options) -> list[dict[str, Any]]:
    count = run_import(fmt, source, out, options, LIMITS)
    summary = validate_local(out, verify_hashes=True)
    assert summary["sample_count"] == count
    samples = list(iter_samples(out))
    for s in samples:
        assert len(s["sha256"]) == 64
        assert s["size"] == (out / s["image"]).stat().st_size
    return samples


def refused(fmt: str, source: Path, out: Path, options: Options) -> ImportFailure:
    with pytest.raises(ImportFailure) as info:
        run_import(fmt, source, out, options, LIMITS)
    assert not out.exists(), "a refused import leaves nothing"
    return info.value


def write_tsv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- VLMEvalKit TSV --------------------------------------------------------------------------


def test_vlmevalkit_tsv_vqa_with_list_answers_and_a_shared_image(tmp_path: Path) -> None:
    src = tmp_path / "DocVQA_VAL.tsv"
    write_tsv(
        src,
        [
            {"index": "1", "image": b64(png("red")), "question": "What?", "answer": "['a', 'b']"},
            {"index": "2", "image": "1", "question": "Multi\nline?", "answer": "plain"},
            {"index": "3", "image": "4", "question": "Later image?", "answer": "c"},
            {"index": "4", "image": b64(png("blue")), "question": "Q4", "answer": "d"},
        ],
    )
    samples = imported("vlmevalkit-tsv", src, tmp_path / "out", opts("vqa"))
    by_id = {s["id"]: s for s in samples}
    assert by_id["1"]["answers"] == ["a", "b"]
    assert by_id["2"]["answers"] == ["plain"]
    assert by_id["2"]["question"] == "Multi\nline?"
    assert by_id["2"]["image"] == by_id["1"]["image"], "a repeated image is stored once"
    assert by_id["3"]["image"] == by_id["4"]["image"]
    assert len(list((tmp_path / "out" / "images").iterdir())) == 2


def test_vlmevalkit_tsv_ocr_takes_the_answer_as_text_and_refuses_bad_rows(tmp_path: Path) -> None:
    src = tmp_path / "OCR.tsv"
    write_tsv(src, [{"index": "a", "image": b64(png()), "question": "read", "answer": "HELLO"}])
    assert imported("vlmevalkit-tsv", src, tmp_path / "ok", opts("ocr"))[0]["text"] == "HELLO"

    bad = tmp_path / "bad.tsv"
    write_tsv(
        bad,
        [
            {"index": "1", "image": "not base64!" * 10, "question": "q", "answer": "x"},
            {"index": "2", "image": b64(b"GIF89a-but-not-really" * 4), "question": "q", "answer": "x"},
            {"index": "3", "image": "['aaa', 'bbb']", "question": "q", "answer": "x"},
            {"index": "4", "image": "99", "question": "q", "answer": "x"},
        ],
    )
    e = refused("vlmevalkit-tsv", bad, tmp_path / "no", opts("ocr"))
    text = "\n".join(e.problems)
    assert "row 2: the image column is not base64" in text
    assert "row 3: not an image Pillow can read" in text
    assert "row 4: a multi-image row" in text
    assert "row 5: the image refers to index '99'" in text


def test_an_image_over_the_pixel_cap_is_refused_as_a_bomb(tmp_path: Path) -> None:
    src = tmp_path / "big.tsv"
    write_tsv(src, [{"index": "1", "image": b64(png(size=(2000, 1000))), "question": "", "answer": "x"}])
    e = refused("vlmevalkit-tsv", src, tmp_path / "no", opts("ocr"))
    assert "row 2: image of 2000x1000 pixels is over the cap of 1000000 pixels" in e.problems[0]
    assert "decompression bomb" in e.problems[0]


# --- Hugging Face Parquet ------------------------------------------------------------------------


def test_hf_parquet_shards_with_an_image_struct_and_a_column_mapping(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "data"
    folder.mkdir()
    for shard, colors in enumerate((["red", "green"], ["blue"])):
        hf_parquet_shard(folder / f"train-0000{shard}-of-00002.parquet", shard, colors)
    options = opts("ocr", {"text": "ground_truth", "id": "uid"})
    samples = imported("hf-parquet", folder, tmp_path / "out", options)
    assert [(s["id"], s["text"]) for s in samples] == [
        ("0-0", "text red"),
        ("0-1", "text green"),
        ("1-0", "text blue"),
    ]

    no_bytes = tmp_path / "nobytes.parquet"
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "x.png"}], "text": ["t"]}), no_bytes)
    e = refused("hf-parquet", no_bytes, tmp_path / "no", opts("ocr"))
    assert e.problems == [
        "nobytes.parquet row 1: the image has no bytes (only a path, 'x.png'): images must be embedded"
    ]

    e = refused("hf-parquet", no_bytes, tmp_path / "no", opts("page"))
    assert "no 'markdown' column" in str(e)


# --- DocVQA JSON --------------------------------------------------------------------------------------


def test_docvqa_json_stores_a_shared_image_once_and_refuses_traversal(tmp_path: Path) -> None:
    src = tmp_path / "docvqa"
    data = docvqa_folder(src)
    (tmp_path / "secret.png").write_bytes(png("black"))
    samples = imported("docvqa-json", src, tmp_path / "out", opts("vqa"))
    assert [(s["id"], s["answers"]) for s in samples] == [("7", ["1 May", "May 1"]), ("8", ["Ann"])]
    assert samples[0]["image"] == samples[1]["image"]

    data.append({"questionId": 9, "question": "x", "image": "../secret.png", "answers": ["y"]})
    data.append({"questionId": 10, "question": "x", "image": "/etc/passwd", "answers": ["y"]})
    (src / "val_v1.0.json").write_text(json.dumps({"data": data}))
    e = refused("docvqa-json", src, tmp_path / "no", opts("vqa"))
    assert "val_v1.0.json entry 3: image '../secret.png' has a '..' segment" in e.problems[0]
    assert "val_v1.0.json entry 4: image '/etc/passwd' is an absolute path" in e.problems[1]


# --- PubTabNet JSONL ----------------------------------------------------------------------------------


def test_pubtabnet_html_is_built_as_the_official_format_html() -> None:
    assert format_html(PUBTABNET_LINE["html"]) == (
        '<html><body><table><thead><tr><td><b>N</b></td><td colspan="2">a&lt;b</td></tr></thead>'
        "<tbody><tr><td></td><td>1&amp;</td><td>2</td></tr></tbody></table></body></html>"
    )


def test_pubtabnet_jsonl_finds_images_under_their_split(tmp_path: Path) -> None:
    src = tmp_path / "pubtabnet"
    pubtabnet_folder(src)
    broken = {**PUBTABNET_LINE, "imgid": 4, "html": {"structure": {"tokens": ["<td>"]}, "cells": []}}
    samples = imported("pubtabnet-jsonl", src, tmp_path / "out", opts("table", {"split": "val"}))
    assert [s["id"] for s in samples] == ["3"]
    assert samples[0]["html"].startswith("<html><body><table><thead>")

    (src / "PubTabNet_2.0.0.jsonl").write_text(json.dumps(broken) + "\n")
    e = refused("pubtabnet-jsonl", src, tmp_path / "no", opts("table"))
    assert e.problems == ["PubTabNet_2.0.0.jsonl line 1: the structure has 1 cells and 'cells' has 0"]


# --- KIE JSON -----------------------------------------------------------------------------------------


def test_kie_json_lines_with_nested_and_wrapped_fields(tmp_path: Path) -> None:
    src = tmp_path / "cord"
    kie_folder(src)
    samples = imported("kie-json", src, tmp_path / "out", opts("kie"))
    assert samples[0]["fields"] == {"company": "ACME", "total": "9.90"}
    assert samples[1]["id"] == "img/r2.png"
    assert samples[1]["fields"] == KIE_NESTED

    (src / "kie.jsonl").write_text(json.dumps({"image": "img/r1.png", "fields": {}}) + "\n")
    e = refused("kie-json", src, tmp_path / "no", opts("kie"))
    assert e.problems == ["kie.jsonl line 1: the fields must be a non-empty JSON object"]


# --- a folder of images and .txt ------------------------------------------------------------------------


def test_images_txt_pairs_images_with_their_transcriptions(tmp_path: Path) -> None:
    src = tmp_path / "lines"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(png())
    (src / "a.txt").write_text("first line\n")
    (src / "sub" / "b.jpg").write_bytes(png())  # a PNG named .jpg: stored by its real format
    (src / "sub" / "b.txt").write_text("second")
    samples = imported("images-txt", src, tmp_path / "out", opts("ocr"))
    assert [(s["id"], s["text"], s["image"][-4:]) for s in samples] == [
        ("a", "first line", ".png"),
        ("sub/b", "second", ".png"),
    ]

    (src / "c.png").write_bytes(png())
    (src / "orphan.txt").write_text("x")
    e = refused("images-txt", src, tmp_path / "no", opts("ocr"))
    assert e.problems == [
        "c.png: no ground truth: c.txt is missing",
        "orphan.txt: a .txt file without an image of the same name",
    ]


# --- PDF ----------------------------------------------------------------------------------------------------


def test_pdf_pages_are_rendered_one_sample_a_page_with_a_sidecar(tmp_path: Path) -> None:
    src = tmp_path / "pdfs"
    pdf_folder(src)
    samples = imported("pdf", src, tmp_path / "out", opts("page"))
    assert [(s["id"], s["markdown"]) for s in samples] == [("report/p1", "# One"), ("report/p3", "Three")]
    with Image.open(tmp_path / "out" / samples[1]["image"]) as im:
        assert im.size == (200, 100)  # 72 dpi: one pixel a point
        red, _, blue = im.convert("RGB").getpixel((100, 50))  # type: ignore[misc]
        assert blue > 200 > 50 > red  # Pillow wrote the page as JPEG: nearly pure blue

    e = refused("pdf", src, tmp_path / "no", opts("page", {"dpi": "600"}))
    assert "report.pdf page 1: at 600 dpi the page would be 1666x833 pixels, over the cap" in e.problems[0]

    (src / "junk.pdf").write_bytes(b"%PDF-1.4 not really")
    e = refused("pdf", src, tmp_path / "no", opts("page"))
    assert "junk.pdf is not a PDF pypdfium2 can open" in str(e)


def test_an_unknown_format_or_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImportFailure, match="Unknown format 'csv'"):
        run_import("csv", tmp_path, tmp_path / "o", opts("ocr"), LIMITS)
    with pytest.raises(ImportFailure, match="task must be one of"):
        run_import("pdf", tmp_path, tmp_path / "o", opts("captioning"), LIMITS)
