"""The eval image's table / kie / page scoring, against the official scripts it follows.

`images/eval/hb_table.py`, `hb_kie.py` and `hb_page.py` are the files the eval image runs,
imported here from the host venv as tests/test_metrics.py imports hb_metrics. The official
implementations are vendored in tests/vendor/ (sources and licenses in their headers):

- PubTabNet `src/metric.py` (TEDS), run with its own dependencies (apted, distance, lxml);
- Donut `JSONParseEvaluator` (field F1, nTED accuracy), run with zss and nltk.

Each conformance test builds its vectors from a fixed seed and asserts equality to 1e-9.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import distance
import pytest
from rapidfuzz.distance import Levenshtein

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "eval"))
sys.path.insert(0, str(ROOT / "tests" / "vendor"))

import donut_json_parse_evaluator as donut  # noqa: E402
import evaluate as ev  # noqa: E402
import hb_kie  # noqa: E402
import hb_page  # noqa: E402
import hb_stats  # noqa: E402
import hb_table  # noqa: E402
import pubtabnet_metric as pubtabnet  # noqa: E402

from worker import contract  # noqa: E402
from worker.manifest import ManifestError, validate_local  # noqa: E402

WORDS = [
    *("Total", "12.5", "n", "", "\u03b1-\u03b2", "Mean ± SD"),
    *("p < 0.05", "2019", "x", "A&B", "—", "Résumé"),
]


# ============================================================================ TEDS: generated tables


def _cell_text(rng: random.Random) -> str:
    word = rng.choice(WORDS)
    style = rng.random()
    esc = word.replace("&", "&amp;").replace("<", "&lt;")
    if style < 0.15:
        return f"<b>{esc}</b>"
    if style < 0.25:
        return f"{esc}<sup>{rng.randint(1, 3)}</sup>"
    if style < 0.3:
        return f"<i>{esc}</i> tail"
    return esc


def _table(rng: random.Random, rows: int, cols: int) -> list[list[tuple[str, int, int]]]:
    """Rows of (content html, colspan, rowspan); some cells span (others in the row are then fewer)."""
    out = []
    for r in range(rows):
        row = []
        c = 0
        while c < cols:
            colspan = 2 if c + 1 < cols and rng.random() < 0.12 else 1
            rowspan = 2 if r + 1 < rows and rng.random() < 0.08 else 1
            row.append((_cell_text(rng), colspan, rowspan))
            c += colspan
        out.append(row)
    return out


def _html(table: list[list[tuple[str, int, int]]], head_rows: int = 1, wrap: bool = True) -> str:
    def tr(row: list[tuple[str, int, int]]) -> str:
        cells = []
        for content, cs, rs in row:
            attrs = (f' colspan="{cs}"' if cs > 1 else "") + (f' rowspan="{rs}"' if rs > 1 else "")
            cells.append(f"<td{attrs}>{content}</td>")
        return "<tr>" + "".join(cells) + "</tr>"

    head = "".join(tr(r) for r in table[:head_rows])
    body = "".join(tr(r) for r in table[head_rows:])
    html = f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"
    return f"<html><body>{html}</body></html>" if wrap else html


def _perturb(rng: random.Random, table: list[list[tuple[str, int, int]]]) -> list[list[tuple[str, int, int]]]:
    t = [list(r) for r in table]
    for _ in range(rng.randint(0, 4)):
        kind = rng.random()
        r = rng.randrange(len(t))
        if kind < 0.35 and t[r]:  # change a cell's text
            c = rng.randrange(len(t[r]))
            t[r][c] = (_cell_text(rng), t[r][c][1], t[r][c][2])
        elif kind < 0.5 and t[r]:  # change a span
            c = rng.randrange(len(t[r]))
            t[r][c] = (t[r][c][0], rng.choice([1, 2, 3]), t[r][c][2])
        elif kind < 0.65 and len(t) > 1:  # drop a row
            del t[r]
        elif kind < 0.8:  # add a row
            t.insert(r, [("", 1, 1) for _ in range(rng.randint(1, 4))])
        elif t[r]:  # drop a cell
            del t[r][rng.randrange(len(t[r]))]
    return t


def _table_pairs() -> list[tuple[str, str]]:
    rng = random.Random(20260601)
    pairs = []
    for k in range(36):
        rows, cols = rng.randint(1, 5), rng.randint(1, 4)
        true = _table(rng, rows, cols)
        if k % 9 == 0:
            pred_html = "<html><body><p>no table here</p></body></html>"  # missing table
        elif k % 9 == 1:
            pred_html = _html(true)  # identical
        elif k % 9 == 2:
            pred_html = _html(_table(rng, rng.randint(1, 5), rng.randint(1, 4)))  # unrelated
        else:
            pred_html = _html(_perturb(rng, true), head_rows=rng.choice([0, 1, 2]))
        pairs.append((pred_html, _html(true)))
    pairs.append(("", pairs[0][1]))  # empty prediction
    pairs.append((pairs[1][1], "<html><body><div>no table</div></body></html>"))  # reference without a table
    return pairs


TABLE_PAIRS = _table_pairs()


@pytest.mark.parametrize("structure_only", [False, True])
def test_teds_equals_pubtabnet_metric_py(structure_only: bool) -> None:
    official = pubtabnet.TEDS(structure_only=structure_only)
    values = []
    for pred, true in TABLE_PAIRS:
        expected = official.evaluate(pred, true)
        got = hb_table.teds(pred, true, structure_only)
        assert got == pytest.approx(expected, abs=1e-9), (pred, true)
        values.append(got)
    # The vectors cover what they claim: zeros (no table), ones (identical), and values in between.
    assert values.count(0.0) >= 5
    assert 1.0 in values
    assert sum(0 < v < 1 for v in values) >= 20


def test_teds_of_a_bare_fragment_equals_the_wrapped_document() -> None:
    # Models answer with a bare <table>; the official script wants <html><body><table>.
    for pred, true in TABLE_PAIRS[:12]:
        bare = pred.removeprefix("<html><body>").removesuffix("</body></html>")
        assert hb_table.teds(f"Here it is:\n{bare}\n", true) == pytest.approx(
            hb_table.teds(pred, true), abs=1e-12
        )


def test_rapidfuzz_levenshtein_equals_distance_on_cell_token_lists() -> None:
    rng = random.Random(7)
    alphabet = ["a", "b", "<b>", "</b>", "1", " ", "é", "<sup>"]
    for _ in range(300):
        a = [rng.choice(alphabet) for _ in range(rng.randint(0, 12))]
        b = [rng.choice(alphabet) for _ in range(rng.randint(0, 12))]
        assert Levenshtein.distance(a, b) == distance.levenshtein(a, b)


def test_teds_hand_vectors() -> None:
    g = "<table><tr><td>ab</td><td>c</td></tr></table>"
    # 3 nodes below <table> (tr, td, td); one cell "c" -> "d": rename cost 1/1; TEDS = 1 - 1/3
    assert hb_table.teds("<table><tr><td>ab</td><td>d</td></tr></table>", g) == pytest.approx(2 / 3)
    assert hb_table.teds("<table><tr><td>ab</td><td>d</td></tr></table>", g, structure_only=True) == 1.0
    # a missing cell: delete one node, 1 - 1/3
    assert hb_table.teds("<table><tr><td>ab</td></tr></table>", g) == pytest.approx(2 / 3)
    # inline tags are tokens of the cell and nodes of the count: <b>ab</b> has 4 tokens vs 2 -> 2/4;
    # 4 elements below the table (tr, td, b, td): 1 - 0.5/4
    assert hb_table.teds("<table><tr><td><b>ab</b></td><td>c</td></tr></table>", g) == pytest.approx(
        1 - 0.5 / 4
    )
    # colspan is part of the rename cost
    assert hb_table.teds('<table><tr><td colspan="2">ab</td><td>c</td></tr></table>', g) == pytest.approx(
        2 / 3
    )
    assert hb_table.teds("no table", g) == 0.0
    assert hb_table.teds("", g) == 0.0
    # comments are dropped by the official parser (remove_comments=True)
    assert hb_table.teds("<table><!-- x --><tr><td>ab</td><td>c</td></tr></table>", g) == 1.0
    # th is not a cell in the official definition: a structural rename (cost 1) whose text is ignored
    th = "<table><tr><th>ab</th><td>c</td></tr></table>"
    official = pubtabnet.TEDS().evaluate(f"<html><body>{th}</body></html>", f"<html><body>{g}</body></html>")
    assert hb_table.teds(th, g) == pytest.approx(official) == pytest.approx(2 / 3)
    # the official script reads body/table of a full document only: a bare fragment scores 0 there
    assert pubtabnet.TEDS().evaluate(g, g) == 0.0
    assert hb_table.teds(g, g) == 1.0


def test_markdown_table_rule() -> None:
    md = (
        "Intro text\n\n| Name | **Qty** | Note |\n|:---|---:|---|\n"
        "| a \\| b | 2 |\n| c | 3<sup>1</sup> | x | extra |\n"
    )
    assert hb_table.markdown_table_to_html(md) == (
        "<table><thead><tr><td>Name</td><td><b>Qty</b></td><td>Note</td></tr></thead><tbody>"
        "<tr><td>a | b</td><td>2</td><td></td></tr>"
        "<tr><td>c</td><td>3<sup>1</sup></td><td>x</td></tr></tbody></table>"
    )
    assert hb_table.markdown_table_to_html("a | b\nno delimiter") is None
    html = (
        "<table><thead><tr><td>k</td><td>v</td></tr></thead>"
        "<tbody><tr><td>1 &lt; 2</td><td>y</td></tr></tbody></table>"
    )
    assert hb_table.teds("| k | v |\n|---|---|\n| 1 < 2 | y |", html) == 1.0
    table, fmt = hb_table.prediction_table("```markdown\n| k | v |\n| --- | --- |\n| 1 | 2 |\n```")
    assert fmt == "markdown"
    assert table is not None
    assert hb_table.prediction_table("```html\n<table><tr><td>1</td></tr></table>\n```")[1] == "html"
    assert hb_table.prediction_table("just words")[1] == "none"


def test_malformed_spans_count_their_leading_digits() -> None:
    g = '<table><tr><td colspan="2">a</td></tr></table>'
    assert hb_table.teds('<table><tr><td colspan="2px">a</td></tr></table>', g) == 1.0
    assert hb_table.teds('<table><tr><td colspan="">a</td></tr></table>', g) == 0.5


# ============================================================================ KIE: generated objects


def _kie_value(rng: random.Random) -> Any:
    return rng.choice(["cake", " 2 ", "5,000", "", 0, 3, 1.5, None, True, "JUICE", "ice tea", "7,000"])


def _kie_object(rng: random.Random, nested: bool) -> dict[str, Any]:
    if not nested:  # SROIE-like
        keys = ["company", "date", "address", "total"]
        obj: dict[str, Any] = {
            k: rng.choice(["ACME SDN BHD", "12/03/2018", "JALAN 1", "9.00", ""]) for k in keys
        }
        obj["total"] = rng.choice(["9.00", "19.90"])
        return obj
    menu = [
        {k: _kie_value(rng) for k in rng.sample(["nm", "cnt", "price", "sub"], rng.randint(1, 4))}
        for _ in range(rng.randint(0, 3))
    ]
    obj = {"menu": menu, "total": {"total_price": rng.choice(["7,000", "12,500"]), "cash": _kie_value(rng)}}
    if rng.random() < 0.3:
        obj["tags"] = [_kie_value(rng) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.2:
        obj["sub_total"] = {"etc": [{"x": "1"}, {"x": ""}]}
    return obj


def _kie_perturb(rng: random.Random, obj: Any) -> Any:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            r = rng.random()
            if r < 0.1:
                continue  # field dropped
            out[k + "_x" if r > 0.95 else k] = _kie_perturb(rng, v)
        if rng.random() < 0.15:
            out["extra"] = "spurious"
        return out
    if isinstance(obj, list):
        items = [_kie_perturb(rng, v) for v in obj if rng.random() > 0.1]
        return items[::-1] if rng.random() < 0.2 else items
    if isinstance(obj, str) and obj and rng.random() < 0.3:
        return obj[:-1] + rng.choice("abc0")
    return obj


def _kie_cases() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    rng = random.Random(20260602)
    cases = []
    for k in range(40):
        answer = _kie_object(rng, nested=k % 3 != 0)
        if not donut.JSONParseEvaluator().normalize_dict(answer):
            answer["total"] = {"total_price": "1"}
        pred = {} if k % 10 == 0 else answer if k % 10 == 1 else _kie_perturb(rng, answer)
        cases.append((pred, answer))
    return cases


KIE_CASES = _kie_cases()


def test_field_f1_equals_donut_cal_f1() -> None:
    official = donut.JSONParseEvaluator()
    preds = [p for p, _ in KIE_CASES]
    answers = [a for _, a in KIE_CASES]
    tp = fp = fn = 0
    for pred, answer in KIE_CASES:
        s_tp, s_fp, s_fn, per_key = hb_kie.field_counts(pred, answer)
        assert hb_kie.f1_from_counts(s_tp, s_fp, s_fn) == pytest.approx(
            official.cal_f1([pred], [answer]), abs=1e-9
        )
        assert sum(c[0] for c in per_key.values()) == s_tp
        assert sum(c[2] for c in per_key.values()) == s_fn
        tp, fp, fn = tp + s_tp, fp + s_fp, fn + s_fn
    assert hb_kie.f1_from_counts(tp, fp, fn) == pytest.approx(official.cal_f1(preds, answers), abs=1e-9)
    assert 0 < hb_kie.f1_from_counts(tp, fp, fn) < 1


def test_nted_accuracy_equals_donut_cal_acc() -> None:
    official = donut.JSONParseEvaluator()
    values = []
    for pred, answer in KIE_CASES:
        got = hb_kie.nted_accuracy(pred, answer)
        assert got == pytest.approx(official.cal_acc(pred, answer), abs=1e-9), (pred, answer)
        values.append(got)
    assert 0.0 in values
    assert 1.0 in values
    assert sum(0 < v < 1 for v in values) >= 15


def test_normalize_dict_and_flatten_equal_donut() -> None:
    official = donut.JSONParseEvaluator()
    for pred, answer in KIE_CASES:
        for obj in (pred, answer):
            assert hb_kie.normalize_dict(obj) == official.normalize_dict(obj)
            assert hb_kie.flatten(hb_kie.normalize_dict(obj)) == official.flatten(
                official.normalize_dict(obj)
            )


def test_kie_prediction_parsing() -> None:
    assert hb_kie.parse_prediction('{"a": "1"}') == ({"a": "1"}, True)
    assert hb_kie.parse_prediction('Here:\n```json\n{"a": "1"}\n```\nDone') == ({"a": "1"}, True)
    assert hb_kie.parse_prediction('The fields are {"a": "1"} as asked') == ({"a": "1"}, True)
    assert hb_kie.parse_prediction("[1, 2]") == ({}, False)
    assert hb_kie.parse_prediction("not json {") == ({}, False)


# ============================================================================ page


def test_page_text_normalization() -> None:
    md = (
        "# Title\n\n> quoted **bold** and _it_ and `code` and ~~gone~~\n\n- item one\n2. item two\n\n"
        "---\n\n![figure](fig.png) see [the link](http://x) snake_case \\* &amp; ﬁ\n<!-- c -->\n"
        "| a | b |\n|---|---|\n| 1 | 2 |\n\nafter<br>table <table><tr><td>x</td></tr></table> end"
    )
    assert hb_page.normalize_text(md) == (
        "Title quoted bold and it and code and gone item one item two "
        "see the link snake_case * & fi after table end"
    )
    assert hb_page.normalize_text("```markdown\nHello   world\n```") == "Hello world"


def test_page_tables_split_in_text_order() -> None:
    md = "| a | b |\n|---|---|\n| 1 | 2 |\n\ntext\n\n<table><tr><td>x</td></tr></table>\n"
    _, tables = hb_page.split_tables(md)
    assert len(tables) == 2
    assert "<td>a</td>" in tables[0]
    assert "<td>x</td>" in tables[1]
    md2 = "<table><tr><td>x</td></tr></table>\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert "<td>x</td>" in hb_page.split_tables(md2)[1][0]


def test_page_table_matching_is_one_to_one_greedy() -> None:
    t1 = "<table><tr><td>alpha</td><td>beta</td></tr></table>"
    t2 = "<table><tr><td>1</td></tr><tr><td>2</td></tr><tr><td>3</td></tr></table>"
    matched = hb_page.match_tables([t1, t2], [t2, t1, t1])
    assert [(i, j) for i, j, _, _ in matched] == [(0, 1), (1, 0)]
    assert all(t == 1.0 for _, _, t, _ in matched)
    assert hb_page.match_tables([t1], []) == []


def test_page_score_sample() -> None:
    gt = "# Report\n\nRevenue grew.\n\n| y | v |\n|---|---|\n| 2023 | 5 |\n"
    fields, has_ref = hb_page.score_sample(
        {"markdown": gt}, "# Report\nRevenue grew!\n<table><tr><td>y</td></tr></table>"
    )
    assert has_ref
    # normalized: "Report Revenue grew." vs "Report Revenue grew!": 1 substitution over 20 characters
    assert fields["page_ned"] == pytest.approx(1 / 20)
    assert fields["gt_tables"] == fields["matched_tables"] == 1
    assert fields["tables_all_found"] == 1
    assert 0 < fields["table_teds_sum"] < 1
    failed, _ = hb_page.score_sample({"markdown": gt}, None)
    assert failed["page_ned"] == 1.0
    assert failed["tables_all_found"] == 0
    assert failed["table_teds_sum"] == 0


# ============================================================================ evaluate.py end to end


def _write_dataset(root: Path, task: str, samples: list[dict[str, Any]]) -> Path:
    data = root / "data"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"name": "t", "version": "1", "task": task}))
    (data / "manifest.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return data


def _write_preds(root: Path, preds: list[dict[str, Any]]) -> Path:
    p = root / "predictions.jsonl"
    p.write_text("".join(json.dumps(x) + "\n" for x in preds))
    return p


def _run(tmp_path: Path, task: str, samples: list[dict[str, Any]], preds: list[dict[str, Any]]) -> tuple:
    data = _write_dataset(tmp_path, task, samples)
    doc = ev.evaluate(data, _write_preds(tmp_path, preds), tmp_path / "out", resamples=200)
    rows = [json.loads(line) for line in (tmp_path / "out" / "per_sample.jsonl").read_text().splitlines()]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == doc
    assert list(doc["metrics"]) == list(contract.TASK_METRICS[task])
    assert doc["primary_metric"] == contract.TASK_METRICS[task][0]
    for m in doc["metrics"].values():
        lo, hi = m["ci95"]
        assert lo is not None
        assert lo <= m["value"] <= hi
    return doc, rows


def test_eval_table(tmp_path: Path) -> None:
    g = "<table><tr><td>ab</td><td>c</td></tr></table>"
    doc, rows = _run(
        tmp_path,
        "table",
        [{"id": i, "image": f"{i}.png", "html": g} for i in ("a", "b", "c", "d")],
        [
            {"id": "a", "prediction": "<table><tr><td>ab</td><td>d</td></tr></table>"},
            {"id": "b", "prediction": "| ab | c |\n|---|---|"},
            {"id": "c", "prediction": None, "error": "boom"},
        ],
    )
    assert doc["task"] == "table"
    assert doc["lower_is_better"] == []
    assert doc["metric_version"] == hb_table.METRIC_VERSION
    assert (doc["errors"], doc["missing"], doc["no_reference"]) == (2, 1, 0)
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["teds"] == pytest.approx(2 / 3, abs=1e-6)
    assert by_id["a"]["teds_struct"] == 1.0
    assert by_id["b"]["prediction_format"] == "markdown"
    assert by_id["c"]["teds"] == 0.0
    assert by_id["d"]["teds"] == 0.0
    assert doc["metrics"]["teds"]["value"] == pytest.approx(sum(r["teds"] for r in rows) / 4, abs=1e-6)
    assert "parser" in doc["normalization"]
    assert rows[0]["metric_version"] == hb_table.METRIC_VERSION


def test_eval_kie(tmp_path: Path) -> None:
    gt = {"menu": [{"nm": "cake", "cnt": "2"}, {"nm": "tea", "cnt": "1"}], "total": {"total_price": "7,000"}}
    doc, rows = _run(
        tmp_path,
        "kie",
        [
            {"id": "a", "image": "a.png", "fields": gt},
            {"id": "b", "image": "b.png", "fields": {"company": "ACME", "total": "9.00"}},
            {"id": "c", "image": "c.png", "fields": {"company": "X"}},
        ],
        [
            {
                "id": "a",
                "prediction": "```json\n"
                + json.dumps({"menu": [{"nm": "cake", "cnt": "2"}], "total": {"total_price": "7,000"}})
                + "\n```",
            },
            {"id": "b", "prediction": "I cannot read this receipt."},
        ],
    )
    official = donut.JSONParseEvaluator()
    preds = [{"menu": [{"nm": "cake", "cnt": "2"}], "total": {"total_price": "7,000"}}, {}, {}]
    answers = [gt, {"company": "ACME", "total": "9.00"}, {"company": "X"}]
    assert doc["metrics"]["field_f1"]["value"] == pytest.approx(official.cal_f1(preds, answers), abs=1e-6)
    mean_acc = (official.cal_acc(preds[0], gt) + 0 + 0) / 3
    assert doc["metrics"]["nted_accuracy"]["value"] == pytest.approx(mean_acc, abs=1e-6)
    assert doc["unparsable"] == 1
    assert doc["errors"] == 1
    assert doc["missing"] == 1
    # gt a: 5 pairs, 3 predicted and found; b: 2 missed; c (missing): 1 missed
    assert doc["field_counts"] == {"tp": 3, "fp": 0, "fn": 5}
    assert doc["per_field"]["menu.nm"] == {
        "tp": 1, "fp": 0, "fn": 1, "support": 2,
        "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3, abs=1e-6),
    }  # fmt: skip
    assert doc["per_field"]["company"]["recall"] == 0.0
    assert doc["per_field"]["company"]["precision"] is None
    assert rows[1]["unparsable"] is True
    assert rows[2]["unparsable"] is False


def test_eval_page(tmp_path: Path) -> None:
    gt_tables = "Intro.\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    doc, rows = _run(
        tmp_path,
        "page",
        [
            {"id": "a", "image": "a.png", "markdown": gt_tables},
            {"id": "b", "image": "b.png", "markdown": "## Only text\n\nHello world."},
            {"id": "c", "image": "c.png", "markdown": "Lost.\n\n<table><tr><td>x</td></tr></table>"},
        ],
        [
            {"id": "a", "prediction": gt_tables},
            {"id": "b", "prediction": "Only text Hello world"},
        ],
    )
    assert doc["primary_metric"] == "page_ned"
    assert doc["lower_is_better"] == ["page_ned"]
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["page_ned"] == 0.0
    assert by_id["a"]["tables_all_found"] == 1
    assert by_id["b"]["page_ned"] == pytest.approx(1 / 22, abs=1e-6)  # the final '.'
    assert by_id["c"]["page_ned"] == 1.0
    # two ground-truth tables, one found with TEDS 1: table_teds = 1/2; pages with tables: a (found), c (not)
    assert doc["metrics"]["table_teds"]["value"] == 0.5
    assert doc["metrics"]["tables_found"]["value"] == 0.5
    assert doc["metrics"]["page_ned"]["value"] == pytest.approx((0 + 1 / 22 + 1) / 3, abs=1e-6)


def test_directions_and_aggregates_of_the_new_metrics() -> None:
    assert hb_stats.lower_is_better("page_ned")
    assert not any(hb_stats.lower_is_better(m) for m in ("teds", "teds_struct", "field_f1", "nted_accuracy"))
    for task in ("table", "kie", "page"):
        assert all(m in hb_stats.AGGREGATES for m in contract.TASK_METRICS[task])


# ============================================================================ manifests of the new tasks


def _dataset(root: Path, task: str, line: dict[str, Any]) -> Path:
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"name": "d", "version": "1", "task": task}))
    (root / "a.png").write_bytes(b"png")
    (root / "manifest.jsonl").write_text(json.dumps({"id": "a", "image": "a.png", **line}) + "\n")
    return root


@pytest.mark.parametrize(
    ("task", "line"),
    [
        ("table", {"html": "<html><body><table><tr><td>1</td></tr></table></body></html>"}),
        ("kie", {"fields": {"menu": [{"nm": "cake"}], "total": "1"}}),
        ("page", {"markdown": "# Title\n\ntext"}),
        ("page", {"markdown": ""}),
    ],
)
def test_manifest_accepts_the_new_tasks(tmp_path: Path, task: str, line: dict[str, Any]) -> None:
    summary = validate_local(_dataset(tmp_path / "d", task, line))
    assert summary["task"] == task
    assert summary["sample_count"] == 1


@pytest.mark.parametrize(
    ("task", "line", "problem"),
    [
        ("table", {}, "missing field 'html'"),
        ("table", {"html": "<p>x</p>"}, "'html' holds no <table> element"),
        ("table", {"html": ["<table>"]}, "'html' must be a string, not an array"),
        ("kie", {}, "missing field 'fields'"),
        ("kie", {"fields": '{"a": 1}'}, "'fields' must be a JSON object, not a string"),
        ("kie", {"fields": {}}, "'fields' is an empty object"),
        ("page", {"text": "x"}, "missing field 'markdown'"),
        ("page", {"markdown": 3}, "'markdown' must be a string, not a number"),
    ],
)
def test_manifest_refuses_bad_ground_truth(
    tmp_path: Path, task: str, line: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ManifestError) as info:
        validate_local(_dataset(tmp_path / "d", task, line))
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(f"manifest.jsonl line 1: {problem}")
