"""The gallery cards of the document tasks (table, kie, page); ocr and vqa keep run_report's text card.

- table: the ground-truth table and the predicted one side by side, rebuilt from their cells
  (hb_report.htmltable: never the model's HTML), the cells that differ at the same grid position
  marked; a Markdown prediction is converted by the eval image's own rule (hb_mdtable); the
  sample's TEDS and TEDS-struct.
- kie: one row per flattened field (key path, ground truth, prediction), matched by the eval
  image's own Donut matching (hb_kie_fields.match_fields), so the marks are exactly the false
  negatives and false positives field_f1 counted; the sample's field F1 and nTED accuracy.
- page: the two Markdown texts as a line diff (difflib), escaped; page NED and the table scores.

hb_mdtable and hb_kie_fields are the eval image's files, copied beside this package in the image
as hb_stats is.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hb_kie_fields
import hb_mdtable

from hb_report.htmltable import parse_table, side_by_side
from hb_report.inputs import num
from hb_report.text import clip, esc, fmt_num
from hb_report.thumbs import thumbnail_html

MAX_DIFF_LINES = 400
MAX_FIELDS = 300

CSS = """
.pair{display:grid;grid-template-columns:1fr 1fr;gap:12px}.pair>div{overflow-x:auto}
.tbl{width:auto;font-size:12.5px}.tbl td,.tbl th{border:1px solid var(--line);padding:3px 6px;
white-space:pre-wrap}.tbl th{color:var(--ink);background:#f1f3f5}
.diff,.fields tr.bad td{background:var(--delbg)}.tbl .diff{outline:2px solid var(--bad)}
.fields td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;white-space:pre-wrap}
.ldiff div{white-space:pre-wrap}.ldiff del,.ldiff ins{display:block}
"""


def _head(r: dict[str, Any], scores: list[tuple[str, object]]) -> str:
    text = " · ".join(f"{esc(name)} {esc(fmt_num(v))}" for name, v in scores)
    return f'<div class="head"><span>{esc(r.get("id"))}</span><span class="score">{text}</span></div>'


def _card(
    data_dir: Path, r: dict[str, Any], pred_row: dict[str, Any], scores: list[tuple[str, object]], body: str
) -> str:
    error = r.get("error") or pred_row.get("error")
    err = f'<div class="lbl">error</div><div class="txt err">{esc(clip(str(error)))}</div>' if error else ""
    return (
        f'<div class="sample">{_head(r, scores)}{thumbnail_html(data_dir, r.get("image"), str(r.get("id")))}'
        f'<div class="body">{err}{body}</div></div>'
    )


def _prediction(r: dict[str, Any]) -> str | None:
    p = r.get("prediction")
    return None if p is None else str(p)


def prediction_table_html(prediction: str) -> str:
    """The text the predicted table is read from: the HTML, or the Markdown table converted (hb_table's
    choice: a text with '<table' is HTML, else its first GFM pipe table)."""
    if "<table" in prediction.lower():
        return prediction
    return hb_mdtable.markdown_table_to_html(prediction) or ""


def table_body(r: dict[str, Any]) -> str:
    truth = parse_table(str(r.get("reference") or ""))
    prediction = _prediction(r)
    pred = parse_table(prediction_table_html(prediction)) if prediction is not None else None
    left, right, marked = side_by_side(truth, pred)
    fmt = esc(r.get("prediction_format") or "none")
    label = "prediction: failed" if prediction is None else f"prediction ({fmt})"
    return (
        f'<div class="lbl">{marked} differing cells marked (same grid position, other text or spans)</div>'
        f'<div class="pair"><div><div class="lbl">ground truth</div>{left}</div>'
        f'<div><div class="lbl">{label}</div>{right}</div></div>'
    )


def field_rows(answer: Any, pred: Any) -> list[tuple[str, str, str, str]]:
    """(key path, ground truth, prediction, mark) per flattened pair: "" (a TP), "mismatch" (a FN and a
    FP of the same key, paired in order), "missing" (a FN), "extra" (a FP). Donut's matching."""
    tps, fps, fns = hb_kie_fields.match_fields(pred, answer)
    keys = list(
        dict.fromkeys(
            [k for k, _ in hb_kie_fields.flatten(hb_kie_fields.normalize_dict(answer))] + [k for k, _ in fps]
        )
    )
    out: list[tuple[str, str, str, str]] = []
    for key in keys:
        out += [(key, str(v), str(v), "") for k, v in tps if k == key]
        missed = [str(v) for k, v in fns if k == key]
        extra = [str(v) for k, v in fps if k == key]
        for i in range(max(len(missed), len(extra))):
            gt = missed[i] if i < len(missed) else ""
            pv = extra[i] if i < len(extra) else ""
            mark = "mismatch" if i < len(missed) and i < len(extra) else ("missing" if gt else "extra")
            out.append((key, gt, pv, mark))
    return out


def _json_object(text: object) -> dict[str, Any]:
    try:
        value = json.loads(str(text or ""))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def kie_body(r: dict[str, Any]) -> str:
    answer = _json_object(r.get("reference"))
    parsed = r.get("parsed")
    pred = parsed if isinstance(parsed, dict) and r.get("prediction") is not None else {}
    rows = field_rows(answer, pred)
    bad = sum(1 for row in rows if row[3])
    trs = "".join(
        f"<tr{' class=bad' if m else ''}><td>{esc(k)}</td><td>{esc(clip(g, 300))}</td>"
        f"<td>{esc(clip(p, 300))}</td><td>{esc(m or 'ok')}</td></tr>"
        for k, g, p, m in rows[:MAX_FIELDS]
    )
    more = f"<p class=muted>… {len(rows) - MAX_FIELDS} more fields</p>" if len(rows) > MAX_FIELDS else ""
    notes = []
    if r.get("prediction") is None:
        notes.append("the sample failed: scored as the empty object")
    elif r.get("unparsable"):
        notes.append("the prediction is not a JSON object: scored as the empty object")
    note = "".join(f'<div class="txt muted">{esc(n)}</div>' for n in notes)
    raw = _prediction(r)
    raw_html = (
        f'<details><summary>raw prediction</summary><div class="txt">{esc(clip(raw))}</div></details>'
        if raw
        else ""
    )
    return (
        f'{note}<div class="lbl">{bad} of {len(rows)} fields marked (missing, extra or mismatched, as '
        f"field F1 counts them)</div><table class=fields><tr><th>field</th><th>ground truth</th>"
        f"<th>prediction</th><th></th></tr>{trs}</table>{more}{raw_html}"
    )


def line_diff_html(reference: str, prediction: str) -> str:
    """Line diff: lines only in the reference (missed) red, only in the prediction (extra) green."""
    a, b = reference.splitlines(), prediction.splitlines()
    out: list[str] = []
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            out += [f"<div>  {esc(line)}</div>" for line in a[a0:a1]]
        if op in ("delete", "replace"):
            out += [f'<del title="missing">- {esc(line)}</del>' for line in a[a0:a1]]
        if op in ("insert", "replace"):
            out += [f'<ins title="extra">+ {esc(line)}</ins>' for line in b[b0:b1]]
    more = (
        f"<div class=muted>… {len(out) - MAX_DIFF_LINES} more lines</div>"
        if len(out) > MAX_DIFF_LINES
        else ""
    )
    return f'<div class="txt ldiff">{"".join(out[:MAX_DIFF_LINES])}{more}</div>'


def page_body(r: dict[str, Any]) -> str:
    reference = clip(str(r.get("reference") or ""))
    prediction = _prediction(r)
    pred_html = (
        '<div class="txt muted">none: the sample failed, scored as the worst value</div>'
        if prediction is None
        else f'<div class="txt">{esc(clip(prediction))}</div>'
    )
    tables = (
        f"tables: {esc(fmt_num(r.get('gt_tables')))} in the ground truth, "
        f"{esc(fmt_num(r.get('pred_tables')))} predicted, {esc(fmt_num(r.get('matched_tables')))} matched"
    )
    return (
        f'<div class="lbl">{tables}</div>'
        f'<div class="lbl">line diff (<del>missing</del> <ins>extra</ins>)</div>'
        f"{line_diff_html(reference, clip(prediction or ''))}"
        f'<details><summary>the two texts</summary><div class="pair"><div><div class="lbl">ground truth'
        f'</div><div class="txt">{esc(reference)}</div></div><div><div class="lbl">prediction</div>'
        f"{pred_html}</div></div></details>"
    )


def page_table_teds(r: dict[str, Any]) -> float | None:
    """The sample's mean TEDS over its ground-truth tables (None: the page has none)."""
    n, total = num(r.get("gt_tables")), num(r.get("table_teds_sum"))
    return total / n if n and total is not None else None


def _scores(task: str, r: dict[str, Any]) -> list[tuple[str, object]]:
    if task == "table":
        return [("TEDS", r.get("teds")), ("TEDS-struct", r.get("teds_struct"))]
    if task == "kie":
        return [("field F1", r.get("field_f1_sample")), ("nTED acc", r.get("nted_accuracy"))]
    return [("page NED", r.get("page_ned")), ("table TEDS", page_table_teds(r))]


BODIES: dict[str, Callable[[dict[str, Any]], str]] = {"table": table_body, "kie": kie_body, "page": page_body}


def doc_card(task: str, data_dir: Path, r: dict[str, Any], pred_row: dict[str, Any]) -> str:
    """The gallery card of a table, kie or page sample."""
    return _card(data_dir, r, pred_row, _scores(task, r), BODIES[task](r))
