"""Whole-page parsing to Markdown: page-level normalized edit distance and TEDS over matched tables.

Our definitions (docs/metrics.md relates them to OmniDocBench's end-to-end scores):

- ``page_ned`` (lower is better): tables are cut out of both texts (they are scored by TEDS),
  the rest is normalized by :func:`normalize_text` (NORMALIZATION['text']) and compared with
  Levenshtein / max(length), 0 when both are empty; mean over pages.
- ``table_teds`` / ``table_teds_struct``: the tables of each side (HTML ``<table>`` elements and
  GFM pipe tables, in text order, converted by hb_table's Markdown rule) are matched one to one
  by :func:`match_tables`; each ground-truth table scores the TEDS (hb_table, PubTabNet's
  definition) of its predicted table, 0 when it has none; corpus value = the sum over all
  ground-truth tables / their number (pages without tables do not count).
- ``tables_found``: the share of pages with at least one ground-truth table whose tables all got
  a predicted table.
"""

from __future__ import annotations

import html as html_lib
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

import hb_table
from rapidfuzz.distance import Levenshtein

METRIC_VERSION = "1.0"
PAGE_METRICS = ("page_ned", "table_teds", "table_teds_struct", "tables_found")

NORMALIZATION: dict[str, str] = {
    "text": "applied to ground truth and prediction alike, in this order: (1) lines that are code fences "
    "(```...) dropped, their content kept; (2) tables cut out: every <table>...</table> (case-insensitive, "
    "up to the first </table>) and every GFM pipe table (hb_table's rule), each replaced by a line break; "
    "(3) HTML comments removed, then every other HTML tag replaced by a space; (4) images ![alt](url) "
    "removed, links [text](url) kept as text; (5) at the start of a line: headings (#..######), block "
    "quotes (>), list bullets (-, *, +), ordered-list numbers (1. or 1)) removed, and a line made only of "
    "3+ of - * _ (a rule) removed; (6) emphasis and code marks removed around their text: **x**, __x__, "
    "*x*, _x_ (not inside words), ~~x~~, `x`; (7) backslash escapes of ASCII punctuation undone; (8) HTML "
    "entities decoded; (9) Unicode NFKC; (10) every run of whitespace becomes one space, stripped. LaTeX "
    "($...$, \\[...\\]) is compared as text",
    "page_ned": "per page Levenshtein(normalized gt, normalized prediction) / max(lengths) (0 when both "
    "are empty), mean over pages; lower is better",
    "tables": "the tables of a page: <table> elements (the first table of each <table>...</table> span) "
    "and GFM pipe tables converted to HTML by hb_table's Markdown rule, in order of their position",
    "table_matching": "one-to-one, greedy: TEDS of every (gt, pred) pair computed; pairs taken in "
    "descending TEDS (ties: lower gt index, then lower pred index) while both tables are free and the "
    "pair's TEDS-struct is above 0; a ground-truth table left without a partner scores 0; predicted "
    "tables left over are counted in extra_tables and cost nothing in TEDS",
    "table_teds": "sum over all ground-truth tables of the corpus of the TEDS of its matched table / "
    "the number of ground-truth tables (pages without tables do not count); table_teds_struct alike",
    "tables_found": "share of the pages with at least one ground-truth table where every ground-truth "
    "table is matched",
}

POLICY: dict[str, str] = {
    "page_failed_or_missing": "a failed or missing prediction scores page_ned = 1, every table 0 and not "
    "found",
    "page_without_reference": "a page whose markdown is empty counts in no_reference; an empty prediction "
    "then scores page_ned 0, a non-empty one 1",
}

_HTML_TABLE = re.compile(r"<table\b.*?</table\s*>", re.IGNORECASE | re.DOTALL)
_FENCE_LINE = re.compile(r"^\s*```.*$", re.MULTILINE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG = re.compile(r"</?[A-Za-z][^<>]*>")
_IMAGE = re.compile(r"!\[[^\]]*\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.MULTILINE)
_LINE_MARK = re.compile(r"^\s*(?:#{1,6}\s+|>\s?|[-*+]\s+|\d+[.)]\s+)+", re.MULTILINE)
_EMPHASIS = [
    re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL),
    re.compile(r"\*(?=\S)(.+?)(?<=\S)\*", re.DOTALL),
    re.compile(r"(?<!\w)_(?=\S)(.+?)(?<=\S)_(?!\w)", re.DOTALL),
    re.compile(r"`([^`]*)`"),
]
_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def split_tables(text: str) -> tuple[str, list[str]]:
    """The text with its tables cut out (each replaced by a line break) and the tables as HTML, in order."""
    found: list[tuple[int, str]] = []

    def cut_html(m: re.Match[str]) -> str:
        found.append((m.start(), m.group()))
        return "\n" + " " * (len(m.group()) - 1)  # keep offsets so positions order both kinds

    rest = _HTML_TABLE.sub(cut_html, text)
    lines = rest.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    md = hb_table.markdown_tables(rest)
    keep = [True] * len(lines)
    for t in md:
        found.append((offsets[t.start], t.html))
        for k in range(t.start, t.end):
            keep[k] = False
    text_out = "".join(line if keep[k] else "\n" for k, line in enumerate(lines))
    found.sort(key=lambda item: item[0])
    return text_out, [h for _, h in found]


def normalize_text(text: str) -> str:
    """Page text without tables and Markdown syntax (rule: NORMALIZATION['text'])."""
    s = _FENCE_LINE.sub("", text)
    s, _ = split_tables(s)
    s = _COMMENT.sub(" ", s)
    s = _TAG.sub(" ", s)
    s = _IMAGE.sub(" ", s)
    s = _LINK.sub(r"\1", s)
    s = _RULE.sub("", s)
    s = _LINE_MARK.sub("", s)
    for pattern in _EMPHASIS:
        s = pattern.sub(lambda m: m.group(m.lastindex or 0), s)
    s = _ESCAPE.sub(r"\1", s)
    s = html_lib.unescape(s)
    s = unicodedata.normalize("NFKC", s)
    return " ".join(s.split())


def page_ned(reference: str, prediction: str) -> float:
    ref, hyp = normalize_text(reference), normalize_text(prediction)
    longest = max(len(ref), len(hyp))
    return 0.0 if longest == 0 else Levenshtein.distance(ref, hyp) / longest


def match_tables(gt: Sequence[str], pred: Sequence[str]) -> list[tuple[int, int, float, float]]:
    """Greedy one-to-one matching (NORMALIZATION['table_matching']): (gt i, pred j, teds, teds_struct)."""
    gt_el = [hb_table.find_table(h) for h in gt]
    pred_el = [hb_table.find_table(h) for h in pred]
    pairs = []
    for i, g in enumerate(gt_el):
        for j, p in enumerate(pred_el):
            if g is None or p is None:
                continue
            struct = hb_table.teds_tables(p, g, structure_only=True)
            if struct > 0:
                pairs.append((hb_table.teds_tables(p, g), struct, i, j))
    pairs.sort(key=lambda x: (-x[0], x[2], x[3]))
    used_g: set[int] = set()
    used_p: set[int] = set()
    matched = []
    for score, struct, i, j in pairs:
        if i in used_g or j in used_p:
            continue
        used_g.add(i)
        used_p.add(j)
        matched.append((i, j, score, struct))
    return sorted(matched)


def score_sample(sample: dict[str, Any], prediction: str | None) -> tuple[dict[str, Any], bool]:
    """A page sample's per-sample fields (prediction None: failed or missing); has it a reference?"""
    reference = str(sample.get("markdown") or "")
    _, gt_tables = split_tables(_FENCE_LINE.sub("", reference))
    if prediction is None:
        pred_tables: list[str] = []
        ned = 1.0
    else:
        _, pred_tables = split_tables(_FENCE_LINE.sub("", prediction))
        ned = page_ned(reference, prediction)
    matched = match_tables(gt_tables, pred_tables)
    teds_sum = sum(m[2] for m in matched)
    struct_sum = sum(m[3] for m in matched)
    n_gt = len(gt_tables)
    fields = {
        "reference": reference,
        "ref_chars": len(normalize_text(reference)),
        "page_ned": round(ned, 6),
        "gt_tables": n_gt,
        "pred_tables": len(pred_tables),
        "matched_tables": len(matched),
        "extra_tables": len(pred_tables) - len(matched),
        "table_matches": [
            {"gt": i, "pred": j, "teds": round(t, 6), "teds_struct": round(s, 6)} for i, j, t, s in matched
        ],
        "table_teds_sum": round(teds_sum, 6),
        "table_teds_struct_sum": round(struct_sum, 6),
        "has_tables": int(n_gt > 0),
        "tables_all_found": int(n_gt > 0 and len(matched) == n_gt),
    }
    return fields, bool(reference.strip())
