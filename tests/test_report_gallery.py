"""The report's gallery cards of the document tasks, and the comparison's paired test on their metrics.

In-process (images/report and images/eval on sys.path, as tests/test_report.py does): the cards
are rendered from rows the eval image's own scoring writes, or from crafted rows; the rendered
HTML is read back with the standard library's parser, so a mark is checked where it is, not by
a substring that could appear anywhere.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "eval"))
sys.path.insert(0, str(ROOT / "images" / "report"))

import evaluate as ev  # noqa: E402
import hb_kie  # noqa: E402
import hb_report as rp  # noqa: E402
import hb_stats  # noqa: E402
import hb_table  # noqa: E402
from hb_report import gallery, htmltable  # noqa: E402
from hb_report.stats import align, common_metrics, paired_tests  # noqa: E402

GT = (
    "<table><thead><tr><td>Item</td><td>Qty</td><td>Price</td></tr></thead>"
    "<tbody><tr><td>Coffee</td><td>2</td><td>3.20</td></tr>"
    "<tr><td>Tea</td><td>1</td><td>2.00</td></tr></tbody></table>"
)


class Cells(HTMLParser):
    """Every cell of every table.tbl in a fragment: (table index, tag, attrs, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = -1
        self.cells: list[tuple[int, str, dict[str, str | None], str]] = []
        self.tags: list[str] = []
        self._open: tuple[str, dict[str, str | None]] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "table" and ("class", "tbl") in attrs:
            self.tables += 1
        if tag in ("td", "th"):
            self._open, self._text = (tag, dict(attrs)), []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._open:
            self.cells.append((self.tables, self._open[0], self._open[1], "".join(self._text)))
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open:
            self._text.append(data)


def cells_of(fragment: str) -> Cells:
    parser = Cells()
    parser.feed(fragment)
    return parser


def marked(fragment: str) -> list[tuple[int, str]]:
    """(table 0 = ground truth / 1 = prediction, text) of the cells marked as differing."""
    return [(t, text) for t, _, attrs, text in cells_of(fragment).cells if attrs.get("class") == "diff"]


def table_row(prediction: str | None, reference: str = GT) -> dict[str, Any]:
    fields, _ = hb_table.score_sample({"html": reference}, prediction)
    return {"id": "t1", "prediction": prediction, **fields}


# ============================================================================ table


def test_a_table_card_marks_exactly_the_cells_that_differ_at_the_same_grid_position() -> None:
    pred = GT.replace("<td>2.00</td>", "<td>2.50</td>").replace("</tbody>", "<tr><td>Cake</td></tr></tbody>")
    body = gallery.table_body(table_row(pred))

    assert marked(body) == [(0, "2.00"), (1, "2.50"), (1, "Cake")]
    assert "3 differing cells marked" in body
    assert len([c for c in cells_of(body).cells if c[0] == 0]) == 9


def test_a_rowspan_shifts_the_grid_and_the_marks_follow_it() -> None:
    gt = '<table><tr><td rowspan="2">A</td><td>b</td></tr><tr><td>c</td></tr></table>'
    pred = "<table><tr><td>A</td><td>b</td></tr><tr><td>c</td></tr></table>"
    body = gallery.table_body(table_row(pred, gt))
    # A's spans differ; the predicted c sits at (1, 0), the ground truth's at (1, 1): both unmatched
    assert marked(body) == [(0, "A"), (0, "c"), (1, "A"), (1, "c")]
    assert [a.get("rowspan") for _, _, a, text in cells_of(body).cells if text == "A"] == ["2", None]


def test_a_markdown_prediction_is_shown_as_the_table_it_was_scored_as() -> None:
    pred = "| Item | Qty | Price |\n|---|---|---|\n| Coffee | 2 | 3.20 |\n| Tea | 1 | 2.00 |"
    row = table_row(pred)
    assert row["teds"] == 1.0
    assert row["prediction_format"] == "markdown"
    body = gallery.table_body(row)
    assert marked(body) == []
    assert "prediction (markdown)" in body
    assert [text for t, _, _, text in cells_of(body).cells if t == 1][:3] == ["Item", "Qty", "Price"]


HOSTILE = (
    "<table><tr><td><script>alert(1)</script></td>"
    '<td colspan="999999"><img src=x onerror=alert(2)>pwn</td>'
    '<td rowspan="-3" colspan="2x">&lt;script&gt;</td></tr>'
    "<tr><td><b>open <i>unbalanced</td><td>x</tr></table "
)


def test_a_hostile_table_prediction_renders_escaped_and_bounded() -> None:
    body = gallery.table_body(table_row(HOSTILE))
    parsed = cells_of(body)

    assert not {"script", "img", "b", "i"} & set(parsed.tags)
    assert "onerror" not in body
    assert "<script" not in body
    pred = [(tag, attrs, text) for t, tag, attrs, text in parsed.cells if t == 1]
    assert [text for _, _, text in pred] == ["alert(1)", "pwn", "<script>", "open unbalanced", "x"]
    assert "&lt;script&gt;" in body  # the text, escaped again
    # every attribute is one we wrote: sanitised spans (capped), the mark and its reason
    assert pred[1][1]["colspan"] == str(htmltable.MAX_SPAN)
    assert "rowspan" not in pred[2][1]
    assert pred[2][1]["colspan"] == "2"
    assert {k for _, attrs, _ in pred for k in attrs} <= {"colspan", "rowspan", "class", "title"}
    assert "cut to the display bounds" in body


def test_a_huge_table_is_cut_to_the_bounds() -> None:
    row = "<tr>" + "<td>x</td>" * (htmltable.MAX_CELLS + 10) + "</tr>"
    table = htmltable.parse_table("<table>" + row * (htmltable.MAX_ROWS + 5) + "</table>")
    assert table is not None
    assert table.clipped
    assert sum(len(r) for r in table.rows) == htmltable.MAX_TOTAL_CELLS
    assert max(len(r) for r in table.rows) == htmltable.MAX_CELLS


def test_a_failed_table_sample_shows_no_predicted_table() -> None:
    body = gallery.table_body(table_row(None))
    assert "prediction: failed" in body
    assert "no table" in body
    assert len(marked(body)) == 0
    assert "0 differing cells marked" in body


# ============================================================================ kie

ANSWER = {
    "menu": [{"nm": "Coffee", "price": "3.20"}, {"nm": "Tea", "price": "2.00"}],
    "total": {"total_price": "5.20"},
    "store": "<b>ACME</b>",
}


class FieldRows(HTMLParser):
    """The rows of table.fields: [field, ground truth, prediction, mark] texts and the row's class."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str | None, list[str]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append((dict(attrs).get("class"), []))
        if tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def kie_rows(prediction: str | None) -> tuple[dict[str, Any], list[tuple[str | None, list[str]]]]:
    fields, _ = hb_kie.score_sample({"fields": ANSWER}, prediction)
    row = {"id": "k1", "prediction": prediction, **fields}
    parser = FieldRows()
    parser.feed(gallery.kie_body(row))
    return row, [r for r in parser.rows if r[1]]  # the header row has no td


def test_the_kie_field_table_marks_what_field_f1_counted() -> None:
    pred = {
        "menu": [{"nm": "Coffee", "price": "3.20"}, {"nm": "Tee", "price": "2.00"}],
        "total": {"total_price": "5.20"},
        "store": "<b>ACME</b>",
        "tax": "0.10",
    }
    row, rows = kie_rows("```json\n" + json.dumps(pred) + "\n```")

    assert [(cls, cells) for cls, cells in rows if cls] == [
        ("bad", ["menu.nm", "Tea", "Tee", "mismatch"]),
        ("bad", ["tax", "", "0.10", "extra"]),
    ]
    assert ["store", "<b>ACME</b>", "<b>ACME</b>", "ok"] in [cells for _, cells in rows]
    # the marks are the score's counts: a mismatch is one FN and one FP
    marks = [cells[3] for _, cells in rows]
    assert row["field_fn"] == sum(m in ("mismatch", "missing") for m in marks) == 1
    assert row["field_fp"] == sum(m in ("mismatch", "extra") for m in marks) == 2
    assert row["field_tp"] == marks.count("ok") == 5


def test_a_duplicated_value_is_one_true_positive_and_one_extra_as_donut_counts_it() -> None:
    pred = {**ANSWER, "menu": [{"nm": "Coffee", "price": "3.20"}, {"nm": "Coffee", "price": "2.00"}]}
    row, rows = kie_rows(json.dumps(pred))
    marks = {(cells[0], cells[1], cells[2], cells[3]) for _, cells in rows}
    assert ("menu.nm", "Tea", "Coffee", "mismatch") in marks
    assert ("menu.nm", "Coffee", "Coffee", "ok") in marks
    assert row["field_fp"] == row["field_fn"] == 1


def test_an_unparsable_or_failed_kie_prediction_marks_every_field_missing() -> None:
    for prediction, note in (("sorry, no JSON <script>x</script>", "not a JSON object"), (None, "failed")):
        row, rows = kie_rows(prediction)
        assert {cells[3] for _, cells in rows} == {"missing"}
        assert len(rows) == row["field_fn"] == 6
        body = gallery.kie_body(row)
        assert note in body
        assert "<script>" not in body


# ============================================================================ page


def test_the_page_card_is_a_line_diff_of_the_two_texts_escaped() -> None:
    ref = "# Title\nline a\nline b\n\n| k | v |\n|---|---|\n| 1 | 2 |"
    pred = "Title\nline a\nline c <script>alert(1)</script>\n\n| k | v |\n|---|---|\n| 1 | 2 |"
    fields, _ = ev.hb_page.score_sample({"markdown": ref}, pred)
    row = {"id": "p1", "prediction": pred, **fields}
    body = gallery.page_body(row)

    assert "<script" not in body
    assert "line c &lt;script&gt;alert(1)&lt;/script&gt;" in body
    dels = [x.split("</del>")[0] for x in body.split('<del title="missing">')[1:]]
    inss = [x.split("</ins>")[0] for x in body.split('<ins title="extra">')[1:]]
    assert dels == ["- # Title", "- line b"]
    assert inss == ["+ Title", "+ line c &lt;script&gt;alert(1)&lt;/script&gt;"]
    assert "1 in the ground truth, 1 predicted, 1 matched" in body
    assert gallery.page_table_teds(row) == 1.0
    assert gallery.page_table_teds({**row, "gt_tables": 0}) is None


# ============================================================================ end to end, in-process

TABLE_PRED = {
    "s1": GT,
    "s2": GT.replace("<td>Tea</td>", "<td>Toa</td>"),
    "s3": HOSTILE,
    "s4": "| Item | Qty |\n|---|---|\n| Coffee | 2 |",
}
KIE_PRED = {
    "s1": json.dumps(ANSWER),
    "s2": json.dumps({**ANSWER, "store": "ACME"}),
    "s3": "not json",
    "s4": json.dumps({"total": {"total_price": "5.20"}}),
}
PAGE_REF = "# Report\nFirst paragraph.\n\n" + "| a | b |\n|---|---|\n| 1 | 2 |\n\nLast line."
PAGE_PRED = {
    "s1": PAGE_REF,
    "s2": PAGE_REF.replace("First", "Frist"),
    "s3": "# Report\nFirst paragraph.",
    "s4": "<table><tr><td>a</td><td>b</td></tr></table>",
}
TASKS: dict[str, tuple[str, Any, dict[str, str]]] = {
    "table": ("html", GT, TABLE_PRED),
    "kie": ("fields", ANSWER, KIE_PRED),
    "page": ("markdown", PAGE_REF, PAGE_PRED),
}


def make_run(tmp: Path, task: str, preds: Mapping[str, str | None]) -> Path:
    """A dataset of TASKS[task] scored by the eval image's own evaluate(); the run's input dir."""
    key, truth, _ = TASKS[task]
    data = tmp / "data"
    if not data.exists():
        data.mkdir()
        (data / "dataset.json").write_text(json.dumps({"name": f"{task}-set", "version": "1", "task": task}))
        manifest = "".join(json.dumps({"id": sid, key: truth}) + "\n" for sid in TASKS[task][2])
        (data / "manifest.jsonl").write_text(manifest)
    run = tmp / f"run-{len(list(tmp.glob('run-*')))}"
    run.mkdir()
    lines = [
        {"id": sid, "prediction": p, "latency_ms": 10.0, "error": None if p is not None else "model crashed"}
        for sid, p in preds.items()
    ]
    (run / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    ev.evaluate(data, run / "predictions.jsonl", run, resamples=200, seed=7)
    (run / "run.json").write_text(json.dumps({"run_id": run.name, "model": f"m-{run.name}", "task": task}))
    return run


@pytest.mark.parametrize("task", list(TASKS))
def test_a_run_report_of_a_document_task_shows_its_task_cards(tmp_path: Path, task: str) -> None:
    run = make_run(tmp_path, task, TASKS[task][2])
    html = rp.build_report(tmp_path / "data", run)

    gallery_html = html.split("samples by ")[1].split("<h2>Failed samples")[0]
    assert gallery_html.count('<div class="sample">') == 4
    assert '<div class="gallery wide">' in html
    assert ".pair{" in html
    assert "<script" not in html
    assert "onerror" not in html
    expected = {
        "table": ["TEDS 0.", "TEDS-struct ", '<table class="tbl">', 'class="diff"'],
        "kie": ["field F1 ", "nTED acc ", "<table class=fields>", "mismatch", "not a JSON object"],
        "page": ["page NED ", "table TEDS ", "line diff", '<del title="missing">- Last line.</del>'],
    }[task]
    assert all(s in gallery_html for s in expected), [s for s in expected if s not in gallery_html]


def test_an_ocr_report_keeps_the_character_diff_card(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "dataset.json").write_text(json.dumps({"name": "o", "version": "1", "task": "ocr"}))
    (data / "manifest.jsonl").write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text(json.dumps({"id": "a", "prediction": "hallo"}) + "\n")
    ev.evaluate(data, run / "predictions.jsonl", run, resamples=50, seed=1)
    html = rp.build_report(data, run)
    assert "diff (<del>missing</del> <ins>extra</ins>)" in html
    assert ".pair{" not in html


# ============================================================================ the comparison's paired test


@pytest.mark.parametrize("task", list(TASKS))
def test_the_paired_test_covers_every_metric_of_a_document_task_in_its_direction(
    tmp_path: Path, task: str
) -> None:
    """A: the weaker predictions; B: perfect ones. Every metric is tested, B better on each."""
    _, truth, weak = TASKS[task]
    perfect = {sid: (json.dumps(truth) if task == "kie" else truth) for sid in weak}
    runs = [rp.load_run(make_run(tmp_path, task, p), str(i)) for i, p in enumerate((weak, perfect))]
    names = common_metrics(runs)
    assert names == list(ev.TASK_METRICS[task])

    tests = paired_tests(align(runs), names, resamples=300, seed=3)

    assert [t.metric for t in tests] == names
    for t in tests:
        a = runs[0].metrics["metrics"][t.metric]["value"]
        b = runs[1].metrics["metrics"][t.metric]["value"]
        assert t.delta == pytest.approx(b - a, abs=1e-6)  # recomputed per sample exactly as scored
        assert t.b_better, t.metric
        assert (t.delta < 0) == hb_stats.lower_is_better(t.metric)
    html = rp.build_comparison(tmp_path / "data", _runs_dir(tmp_path))
    assert all(f">{name}<" in html for name in names)


def _runs_dir(tmp: Path) -> Path:
    runs = tmp / "runs"
    runs.mkdir()
    for i, run in enumerate(sorted(tmp.glob("run-*"))):
        (runs / str(i)).symlink_to(run, target_is_directory=True)
    return runs
