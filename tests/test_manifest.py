"""worker.manifest: dataset.json and manifest.jsonl are validated line by line, streaming."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lxml.html
import pytest

from worker.manifest import (
    MAX_PROBLEMS,
    ManifestError,
    iter_samples,
    read_dataset_json,
    sha256_file,
    validate_local,
)

PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"not really an image, but bytes to hash" * 3


def make_dataset(
    root: Path,
    lines: Sequence[object] | None = None,
    *,
    task: str = "ocr",
    images: dict[str, bytes] | None = None,
    raw_manifest: str | None = None,
) -> Path:
    """Write a dataset version dir; ``lines`` are JSON-encoded (str items written verbatim)."""
    root.mkdir(parents=True, exist_ok=True)
    info = {"name": "tiny", "version": "1", "task": task, "description": "test", "license": "CC0-1.0"}
    (root / "dataset.json").write_text(json.dumps(info))
    for rel, data in (images if images is not None else {"img/a.png": PNG_BYTES}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    if raw_manifest is None:
        if lines is None:
            lines = [{"id": "a", "image": "img/a.png", "text": "hello"}]
        raw_manifest = "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    (root / "manifest.jsonl").write_text(raw_manifest)
    return root


def problems_of(root: Path, **kwargs: bool) -> list[str]:
    with pytest.raises(ManifestError) as caught:
        validate_local(root, **kwargs)
    return caught.value.problems


def ocr(sample_id: str, image: str = "img/a.png", **extra: object) -> dict[str, object]:
    return {"id": sample_id, "image": image, "text": "t", **extra}


# --------------------------------------------------------------------------- the good case


def test_it_accepts_a_valid_ocr_dataset_and_summarises_it(tmp_path: Path) -> None:
    images = {"img/a.png": PNG_BYTES, "img/b.png": PNG_BYTES * 2, "c.png": b"x"}
    lines = [
        {
            "id": "a",
            "image": "img/a.png",
            "text": "hello",
            "size": len(PNG_BYTES),
            "sha256": hashlib.sha256(PNG_BYTES).hexdigest(),
        },
        {"id": "b", "image": "img/b.png", "text": ""},  # empty ground truth is allowed
        {"id": "c", "image": "./c.png", "text": "line 1\nline 2", "category": "extra fields are fine"},
    ]
    root = make_dataset(tmp_path / "ds", lines, images=images)

    summary = validate_local(root, verify_hashes=True)

    expected_sha = hashlib.sha256((root / "manifest.jsonl").read_bytes()).hexdigest()
    assert summary == {
        "manifest_sha256": expected_sha,
        "sample_count": 3,
        "total_bytes": len(PNG_BYTES) * 3 + 1,
        "task": "ocr",
        "name": "tiny",
        "version": "1",
    }


def test_it_accepts_a_valid_vqa_dataset(tmp_path: Path) -> None:
    lines = [{"id": "q1", "image": "img/a.png", "question": "What is the total?", "answers": ["$5", "5"]}]
    root = make_dataset(tmp_path / "ds", lines, task="vqa")
    assert validate_local(root)["task"] == "vqa"


def test_it_accepts_an_image_symlink_that_stays_inside_the_dataset(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a", "link.png")])
    os.symlink("img/a.png", root / "link.png")
    assert validate_local(root)["total_bytes"] == len(PNG_BYTES)


def test_sha256_file_equals_hashlib_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)  # more than one read chunk
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_iter_samples_streams_the_lines_in_order(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), ocr("b"), ocr("c")])
    assert [sample["id"] for sample in iter_samples(root)] == ["a", "b", "c"]


def test_iter_samples_refuses_a_line_that_is_not_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), "{oops"])
    samples = iter_samples(root)
    assert next(samples)["id"] == "a"
    with pytest.raises(ManifestError, match=r"manifest\.jsonl line 2"):
        next(samples)


def test_it_validates_a_manifest_of_100k_lines(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    make_dataset(root, raw_manifest="")
    with open(root / "manifest.jsonl", "w") as handle:
        for index in range(100_000):
            handle.write(json.dumps({"id": f"s{index}", "image": "img/a.png", "text": "x"}) + "\n")
    summary = validate_local(root)
    assert summary["sample_count"] == 100_000
    assert summary["manifest_sha256"] == sha256_file(root / "manifest.jsonl")


# --------------------------------------------------------------------------- manifest lines


def test_it_refuses_a_manifest_line_that_is_not_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), ocr("b"), '{"id": "c", "image": '])
    problems = problems_of(root)
    assert len(problems) == 1
    assert problems[0].startswith("manifest.jsonl line 3: invalid JSON")


def test_it_refuses_a_manifest_line_that_is_not_an_object(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), ["a", "list"]])
    assert problems_of(root) == ["manifest.jsonl line 2: must be a JSON object, not an array"]


def test_it_refuses_a_blank_line(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), "", ocr("b")])
    assert problems_of(root) == ["manifest.jsonl line 2: blank line (every line must be one JSON object)"]


def test_it_refuses_an_empty_manifest(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", raw_manifest="")
    assert problems_of(root) == ["manifest.jsonl: no samples (the manifest is empty)"]


def test_it_refuses_a_missing_manifest(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "manifest.jsonl").unlink()
    assert problems_of(root)[0].startswith("manifest.jsonl: missing")


def test_it_names_the_line_and_path_of_a_missing_image(tmp_path: Path) -> None:
    lines = [ocr("a"), ocr("b"), ocr("c"), ocr("d"), ocr("e"), ocr("f"), ocr("g", "img/x.png")]
    root = make_dataset(tmp_path / "ds", lines)
    assert problems_of(root) == ["manifest.jsonl line 7: image 'img/x.png' does not exist"]


def test_it_refuses_a_duplicate_id(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), ocr("b"), ocr("a")])
    assert problems_of(root) == ["manifest.jsonl line 3: duplicate id 'a'"]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"image": "img/a.png", "text": "t"}, "manifest.jsonl line 1: missing field 'id'"),
        ({"id": "", "image": "img/a.png", "text": "t"}, "manifest.jsonl line 1: 'id' is empty"),
        (
            {"id": 7, "image": "img/a.png", "text": "t"},
            "manifest.jsonl line 1: 'id' must be a string, not a number",
        ),
        ({"id": "a", "text": "t"}, "manifest.jsonl line 1: missing field 'image'"),
        ({"id": "a", "image": "img/a.png"}, "manifest.jsonl line 1: missing field 'text'"),
        ({"id": "a", "image": "img/a.png", "text": None}, "manifest.jsonl line 1: missing field 'text'"),
        ({"id": "a", "image": "img/a.png", "text": 3}, "manifest.jsonl line 1: 'text' must be a string"),
    ],
)
def test_it_refuses_a_line_with_a_missing_or_mistyped_field(
    tmp_path: Path, sample: dict[str, object], expected: str
) -> None:
    root = make_dataset(tmp_path / "ds", [sample])
    problems = problems_of(root)
    assert len(problems) == 1
    assert problems[0].startswith(expected)


@pytest.mark.parametrize(
    "image",
    ["../x", "img/../../x", "/etc/passwd", "img\\a.png", "img/a.png\x00", "C:/x.png", ""],
)
def test_it_refuses_an_image_path_that_leaves_the_dataset_or_is_not_posix(tmp_path: Path, image: str) -> None:
    (tmp_path / "x").write_bytes(b"outside")
    root = make_dataset(tmp_path / "ds", [ocr("a", image)])
    problems = problems_of(root)
    assert len(problems) == 1
    assert problems[0].startswith("manifest.jsonl line 1: ")
    assert "does not exist" not in problems[0]


def test_it_refuses_a_symlink_that_escapes_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"outside the dataset")
    root = make_dataset(tmp_path / "ds", [ocr("a"), ocr("b", "img/evil.png")])
    os.symlink(tmp_path / "secret.png", root / "img" / "evil.png")
    assert problems_of(root) == [
        "manifest.jsonl line 2: image 'img/evil.png' resolves outside the dataset directory (a symlink?)"
    ]


def test_it_refuses_a_directory_symlink_that_escapes_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "a.png").write_bytes(b"outside")
    root = make_dataset(tmp_path / "ds", [ocr("a", "sub/a.png")])
    os.symlink(tmp_path / "elsewhere", root / "sub")
    assert "resolves outside the dataset directory" in problems_of(root)[0]


def test_it_refuses_an_image_that_is_a_directory(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a", "img")])
    assert problems_of(root) == ["manifest.jsonl line 1: image 'img' is not a regular file"]


def test_it_refuses_a_size_that_does_not_match_the_file(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a", size=len(PNG_BYTES) + 1)])
    size = len(PNG_BYTES)
    assert problems_of(root) == [
        f"manifest.jsonl line 1: image 'img/a.png' has {size} bytes, the manifest says {size + 1}"
    ]


def test_it_checks_sha256_only_when_asked(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a", sha256="0" * 64)])
    assert validate_local(root)["sample_count"] == 1
    problems = problems_of(root, verify_hashes=True)
    assert len(problems) == 1
    assert problems[0].startswith("manifest.jsonl line 1: image 'img/a.png' has sha256 ")


def test_it_refuses_a_malformed_sha256_even_without_verifying(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a", sha256="xyz")])
    assert "'sha256' must be 64 lowercase hex digits" in problems_of(root)[0]


@pytest.mark.parametrize(
    ("sample", "expected"),
    [
        ({"id": "a", "image": "img/a.png", "text": "t"}, "missing field 'question'"),
        ({"id": "a", "image": "img/a.png", "question": "q?"}, "missing field 'answers'"),
        (
            {"id": "a", "image": "img/a.png", "question": "q?", "answers": []},
            "'answers' must be a non-empty list",
        ),
        (
            {"id": "a", "image": "img/a.png", "question": "q?", "answers": "yes"},
            "'answers' must be a non-empty list",
        ),
        (
            {"id": "a", "image": "img/a.png", "question": "q?", "answers": ["ok", 1]},
            "every item of 'answers'",
        ),
        ({"id": "a", "image": "img/a.png", "question": 1, "answers": ["ok"]}, "'question' must be a string"),
    ],
)
def test_it_refuses_vqa_lines_without_question_and_answers(
    tmp_path: Path, sample: dict[str, object], expected: str
) -> None:
    root = make_dataset(tmp_path / "ds", [sample], task="vqa")
    problems = problems_of(root)
    assert problems[0].startswith("manifest.jsonl line 1: ")
    assert expected in problems[0]


def test_it_lists_every_problem_but_bounds_the_list(tmp_path: Path) -> None:
    lines = [ocr(f"s{index}", f"img/missing-{index}.png") for index in range(50)]
    root = make_dataset(tmp_path / "ds", lines)
    problems = problems_of(root)
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[0] == "manifest.jsonl line 1: image 'img/missing-0.png' does not exist"
    assert problems[-1] == f"... and {50 - MAX_PROBLEMS} more problems"


def test_it_reports_problems_of_several_lines_together(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds", [ocr("a"), "nope", ocr("a"), ocr("b", "../b.png")])
    problems = problems_of(root)
    assert [problem.split(":")[0] for problem in problems] == [
        "manifest.jsonl line 2",
        "manifest.jsonl line 3",
        "manifest.jsonl line 4",
    ]


# --------------------------------------------------------------------------- dataset.json


def test_it_reads_dataset_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    assert read_dataset_json(root) == {
        "name": "tiny",
        "version": "1",
        "task": "ocr",
        "description": "test",
        "license": "CC0-1.0",
    }


def test_it_refuses_a_missing_dataset_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").unlink()
    with pytest.raises(ManifestError, match=r"dataset\.json: missing"):
        read_dataset_json(root)


def test_it_refuses_a_dataset_json_that_is_not_json(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text("{name: tiny}")
    with pytest.raises(ManifestError, match=r"dataset\.json: invalid JSON"):
        validate_local(root)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"version": "1", "task": "ocr"}, ["dataset.json: missing field 'name'"]),
        ({"name": "tiny", "task": "ocr"}, ["dataset.json: missing field 'version'"]),
        (
            {"name": "tiny", "version": "1"},
            ["dataset.json: missing field 'task' (one of ocr, vqa, table, kie, page)"],
        ),
        (
            {"name": "tiny", "version": "1", "task": "asr"},
            ["dataset.json: 'task' must be one of ocr, vqa, table, kie, page, not 'asr'"],
        ),
        (
            {"name": "tiny", "version": 1, "task": "ocr"},
            ["dataset.json: 'version' must be a string, not a number"],
        ),
        ({"name": "../up", "version": "1", "task": "ocr"}, ["dataset.json: 'name' '../up' must be"]),
        ({"name": "tiny", "version": "1", "task": "ocr", "license": 3}, ["dataset.json: 'license' must be"]),
        (
            {},
            [
                "dataset.json: missing field 'name'",
                "dataset.json: missing field 'version'",
                "dataset.json: missing",
            ],
        ),
    ],
)
def test_it_refuses_a_dataset_json_with_missing_or_invalid_fields(
    tmp_path: Path, info: dict[str, object], expected: list[str]
) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text(json.dumps(info))
    with pytest.raises(ManifestError) as caught:
        read_dataset_json(root)
    assert len(caught.value.problems) == len(expected)
    for problem, prefix in zip(caught.value.problems, expected, strict=True):
        assert problem.startswith(prefix)


def test_description_and_license_are_optional(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "ds")
    (root / "dataset.json").write_text(json.dumps({"name": "tiny", "version": "1", "task": "ocr"}))
    info = read_dataset_json(root)
    assert (info["description"], info["license"]) == ("", "")


# --------------------------------------------------------------------------- the sample dataset script


def load_sample_script(name: str = "make_sample_dataset") -> Any:
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_sample_dataset_is_valid_deterministic_and_written_once(tmp_path: Path) -> None:
    script = load_sample_script()
    first = script.write_dataset(tmp_path / "a" / "1", count=8, seed=7)
    again = script.write_dataset(tmp_path / "a" / "1", count=8, seed=7)
    elsewhere = script.write_dataset(tmp_path / "b" / "1", count=8, seed=7)

    assert first["created"]
    assert not again["created"]
    assert elsewhere["created"]
    assert first["manifest_sha256"] == again["manifest_sha256"] == elsewhere["manifest_sha256"]
    summary = validate_local(tmp_path / "a" / "1", verify_hashes=True)
    assert summary["manifest_sha256"] == first["manifest_sha256"]
    assert (summary["name"], summary["version"], summary["task"], summary["sample_count"]) == (
        "sample-docs",
        "1",
        "ocr",
        8,
    )
    samples = list(iter_samples(tmp_path / "a" / "1"))
    assert {sample["category"] for sample in samples} == {"line", "paragraph", "keyvalue", "table"}
    assert all(sample["text"] and "  " not in sample["text"] for sample in samples)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["1"]  # no temp dirs left behind


def test_the_sample_dataset_replaces_a_different_version_but_not_a_foreign_dir(tmp_path: Path) -> None:
    script = load_sample_script()
    out = tmp_path / "ds"
    script.write_dataset(out, count=4, seed=7)
    bigger = script.write_dataset(out, count=5, seed=7)
    assert bigger["created"]
    assert validate_local(out)["sample_count"] == 5

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        script.write_dataset(foreign, count=4, seed=7)
    assert (foreign / "notes.txt").read_text() == "mine"


def row_widths(table_html: str) -> list[int]:
    """The grid columns each row of a table covers, cells spanning into it from rows above included."""
    from_above: dict[int, int] = {}
    widths = []
    for r, tr in enumerate(lxml.html.fromstring(table_html).iter("tr")):
        width = from_above.pop(r, 0)
        for td in tr.iter("td"):
            colspan, rowspan = int(td.get("colspan", 1)), int(td.get("rowspan", 1))
            width += colspan
            for below in range(r + 1, r + rowspan):
                from_above[below] = from_above.get(below, 0) + colspan
        widths.append(width)
    return widths


def test_the_sample_tables_are_valid_deterministic_written_once_and_whole_grids(tmp_path: Path) -> None:
    script = load_sample_script("make_sample_tables")
    first = script.write_dataset(tmp_path / "a" / "1", count=8, seed=11)
    again = script.write_dataset(tmp_path / "a" / "1", count=8, seed=11)
    elsewhere = script.write_dataset(tmp_path / "b" / "1", count=8, seed=11)

    assert (first["created"], again["created"], elsewhere["created"]) == (True, False, True)
    assert first["manifest_sha256"] == again["manifest_sha256"] == elsewhere["manifest_sha256"]
    summary = validate_local(tmp_path / "a" / "1", verify_hashes=True)
    assert (summary["name"], summary["task"], summary["sample_count"]) == ("sample-tables", "table", 8)
    samples = list(iter_samples(tmp_path / "a" / "1"))
    assert {s["category"] for s in samples} == {"plain", "total", "grouped-header", "grouped-rows"}
    for sample in samples:
        html = sample["html"]
        assert html.startswith("<table><thead><tr>"), html
        assert html.endswith("</tr></tbody></table>"), html
        widths = row_widths(html)
        assert len(widths) >= 3, html
        assert len(set(widths)) == 1, (sample["id"], widths)  # no ragged row
    spans = {
        c: " ".join(s["html"] for s in samples if s["category"] == c) for c in ("total", "grouped-header")
    }
    assert "colspan=" in spans["total"]
    assert "rowspan=" not in spans["total"]
    assert "colspan=" in spans["grouped-header"]
    assert "rowspan=" in spans["grouped-header"]
    assert all("rowspan=" in s["html"] for s in samples if s["category"] == "grouped-rows")
    assert all("span=" not in s["html"] for s in samples if s["category"] == "plain")


@pytest.mark.parametrize(
    ("task", "name", "truth"), [("page", "sample-pages", "markdown"), ("kie", "sample-receipts", "fields")]
)
def test_the_page_and_kie_sample_datasets_are_valid_deterministic_and_written_once(
    tmp_path: Path, task: str, name: str, truth: str
) -> None:
    script = load_sample_script("make_doc_datasets")
    first = script.write_dataset(task, tmp_path / "a" / "1", count=4, seed=7)
    again = script.write_dataset(task, tmp_path / "a" / "1", count=4, seed=7)
    elsewhere = script.write_dataset(task, tmp_path / "b" / "1", count=4, seed=7)

    assert first["created"]
    assert not again["created"]
    assert elsewhere["created"]
    assert first["manifest_sha256"] == again["manifest_sha256"] == elsewhere["manifest_sha256"]
    summary = validate_local(tmp_path / "a" / "1", verify_hashes=True)  # the platform's own check
    assert (summary["name"], summary["task"], summary["sample_count"]) == (name, task, 4)
    rows = [json.loads(line) for line in (tmp_path / "a" / "1" / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"{'page' if task == 'page' else 'receipt'}-{i:04d}" for i in range(4)]
    for row in rows:
        assert truth in row
        if task == "page":
            md = row["markdown"]
            assert md.startswith("# ")
            assert md.count("\n|---|") == 1  # one GFM pipe table per page, under its header row
        else:
            fields = row["fields"]
            assert set(fields) == {"store", "date", "items", "total"}
            assert fields["items"]
            assert all(set(item) == {"name", "qty", "price"} for item in fields["items"])
            total = sum(float(item["price"]) for item in fields["items"])
            assert fields["total"] == f"{total:.2f}"
