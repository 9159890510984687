"""Table recognition: TEDS and TEDS-struct exactly as PubTabNet's ``src/metric.py`` defines them.

Source: ibm-aur-nlp/PubTabNet, ``src/metric.py`` at commit 7b03ef8 (Apache-2.0), the
``TEDS`` class with its default ``ignore_nodes=None``. ``tests/vendor/pubtabnet_metric.py``
holds that file; ``tests/test_metrics_table_kie_page.py`` checks this module against it to
1e-9. What is the same, step by step:

- both HTML strings are parsed with ``lxml.html.HTMLParser(remove_comments=True,
  encoding='utf-8')`` (the parser the official script builds; see PARSER below);
- the tree is the table element's element tree: every element is a node; a ``td`` is a leaf
  carrying ``colspan``, ``rowspan`` (``int``, default 1) and, unless structure-only, its
  content tokens: ``<tag>`` / ``</tag>`` for each inline element inside the cell and one token
  per character of text and tails (the official ``tokenize``); ``th`` is NOT a cell (the
  official script treats it as a structural node and ignores its text);
- APTED tree edit distance with insert = delete = 1 and rename = 1 when tag, colspan or
  rowspan differ, else for ``td`` the normalized Levenshtein distance of the token lists
  (distance / the longer length; 0 when both are empty), else 0;
- TEDS = 1 - distance / max(node count of either table), where the node count is the
  official ``len(table.xpath('.//*'))`` (every element below the table, inline tags
  included, the table itself not);
- 0 when either side is empty or has no table.

``distance.levenshtein`` (the official dependency) is replaced by rapidfuzz's
``Levenshtein.distance`` on the same token lists: both are the unit-cost edit distance over
sequences of hashable items (checked by the tests on every vector).

What we add, because model output is not a PubTabNet file (each step is documented in
NORMALIZATION and docs/metrics.md):

- the table is the FIRST ``<table>`` element anywhere in the text (the official script takes
  ``body/table`` of a full ``<html><body>`` document; for such documents the two agree);
- a prediction without ``<table`` but with a Markdown (GFM) pipe table is converted to HTML
  by :func:`markdown_table_to_html`;
- a ``colspan``/``rowspan`` that ``int()`` refuses (``"2px"``, ``""``) counts as its leading
  digits, or 1 (the official script would raise).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from apted import APTED, Config
from apted.helpers import Tree
from hb_mdtable import MarkdownTable as MarkdownTable
from hb_mdtable import markdown_table_to_html
from hb_mdtable import markdown_tables as markdown_tables
from lxml import etree, html
from rapidfuzz.distance import Levenshtein

METRIC_VERSION = "1.0"
TABLE_METRICS = ("teds", "teds_struct")
PARSER = "lxml.html.HTMLParser(remove_comments=True, encoding='utf-8'), passed as parser= (PubTabNet 7b03ef8)"

NORMALIZATION: dict[str, str] = {
    "teds": "PubTabNet src/metric.py (ibm-aur-nlp/PubTabNet 7b03ef8) TEDS, ignore_nodes=None: APTED tree "
    "edit distance between the two tables' element trees; insert/delete 1; rename 1 when tag, colspan or "
    "rowspan differ, else for td the Levenshtein distance of the cell tokens (one per character, <tag> and "
    "</tag> for inline elements) divided by the longer token list; TEDS = 1 - distance / max(number of "
    "elements below each table element); 0 when either side has no table. th is not a cell (as in the "
    "official script: a structural node whose text is ignored)",
    "teds_struct": "the same with structure_only=True: cell content ignored",
    "parser": PARSER + "; HTML comments are dropped. The revision before 0e0c343 passed the parser "
    "positionally (as base_url): lxml then used its default parser, which keeps comments; lxml >= 5 "
    "refuses that call",
    "table_extraction": "the first <table> element anywhere in the text (lxml document order); the official "
    "script takes body/table of a full <html><body> document, which is the same table for such documents",
    "markdown": "a prediction with no '<table' (case-insensitive) but with a GFM pipe table (a row of cells "
    "separated by '|' followed by a delimiter row of ---, :---, ---: or :---:) is converted: the header row "
    "becomes <thead><tr><td>..</td></tr></thead>, the other rows <tbody><tr><td>..</td></tr></tbody> (td, "
    "not th, as PubTabNet's ground truth writes headers); rows are padded with empty cells or cut to the "
    "header's cell count (GFM); cell text is stripped, '\\|' becomes '|', **x** and __x__ become <b>x</b>, "
    "the inline tags <b> <i> <sup> <sub> <br> (and their closing forms) written literally are kept, every "
    "other character is HTML-escaped. Only the first Markdown table counts",
    "spans": "colspan/rowspan parsed with int(); a value int() refuses counts as its leading digits, or 1 "
    "(the official script raises)",
}

POLICY: dict[str, str] = {
    "table_without_reference": "a sample whose html has no table counts in no_reference and scores 0",
    "table_failed_or_missing": "a failed or missing prediction scores teds = teds_struct = 0",
}


# ----------------------------------------------------------------------------- the official tree


class TableTree(Tree):
    """PubTabNet's TableTree: an apted node with tag, colspan, rowspan and cell tokens."""

    def __init__(
        self, tag: Any, colspan: int | None = None, rowspan: int | None = None, content: Any = None
    ) -> None:
        self.tag = tag
        self.colspan = colspan
        self.rowspan = rowspan
        self.content = content
        self.children: list[TableTree] = []

    def bracket(self) -> str:
        if self.tag == "td":
            result = f'"tag": {self.tag}, "colspan": {self.colspan}, "rowspan": {self.rowspan}, '
            result += f'"text": {self.content}'
        else:
            result = f'"tag": {self.tag}'
        return "{" + result + "".join(c.bracket() for c in self.children) + "}"


class TedsConfig(Config):
    """PubTabNet's CustomConfig, with rapidfuzz's Levenshtein for ``distance.levenshtein``."""

    def rename(self, node1: TableTree, node2: TableTree) -> float:
        if node1.tag != node2.tag or node1.colspan != node2.colspan or node1.rowspan != node2.rowspan:
            return 1.0
        if node1.tag == "td" and (node1.content or node2.content):
            return normalized_distance(node1.content, node2.content)
        return 0.0


def normalized_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """Levenshtein distance of two token lists / the longer length (the official normalized_distance)."""
    return float(Levenshtein.distance(list(a), list(b))) / max(len(a), len(b))


def _span(value: str | None) -> int:
    if value is None:
        return 1
    try:
        return int(value)
    except ValueError:
        digits = re.match(r"\s*\d+", value)
        return int(digits.group()) if digits else 1


def _tokenize(node: Any, tokens: list[str]) -> None:
    """The official ``TEDS.tokenize``: tags as tokens, text and tails one character a token."""
    tokens.append(f"<{node.tag}>")
    if node.text is not None:
        tokens.extend(node.text)
    for child in node.getchildren():
        _tokenize(child, tokens)
    if node.tag != "unk":
        tokens.append(f"</{node.tag}>")
    if node.tag != "td" and node.tail is not None:
        tokens.extend(node.tail)


def _tree(node: Any, structure_only: bool) -> TableTree:
    """The official ``TEDS.load_html_tree``."""
    if node.tag == "td":
        cell: list[str] = []
        if not structure_only:
            tokens: list[str] = []
            _tokenize(node, tokens)
            cell = tokens[1:-1]
        return TableTree("td", _span(node.attrib.get("colspan")), _span(node.attrib.get("rowspan")), cell)
    new = TableTree(node.tag)
    new.children = [_tree(child, structure_only) for child in node.getchildren()]
    return new


def _parser() -> Any:
    return html.HTMLParser(remove_comments=True, encoding="utf-8")


def find_table(text: str) -> Any | None:
    """The first ``<table>`` element of an HTML text (parsed with the official parser), or None."""
    if not text or not text.strip():
        return None
    try:
        root = html.fromstring(text, parser=_parser())
    except (etree.ParserError, ValueError):
        return None
    return next(root.iter("table"), None)


def teds_tables(pred: Any, true: Any, structure_only: bool = False) -> float:
    """TEDS of two parsed ``table`` elements (the body of the official ``TEDS.evaluate``)."""
    n_nodes = max(len(pred.xpath(".//*")), len(true.xpath(".//*")))
    if n_nodes == 0:
        return 0.0  # two empty <table></table>: the official script divides by zero
    dist = APTED(
        _tree(pred, structure_only), _tree(true, structure_only), TedsConfig()
    ).compute_edit_distance()
    return 1.0 - float(dist) / n_nodes


def prediction_table(text: str) -> tuple[Any | None, str]:
    """The table a prediction holds and its format: ('html' | 'markdown' | 'none')."""
    if "<table" in text.lower():
        table = find_table(text)
        return (table, "html") if table is not None else (None, "none")
    md = markdown_table_to_html(text)
    if md is not None:
        table = find_table(md)
        if table is not None:
            return table, "markdown"
    return None, "none"


# ----------------------------------------------------------------------------- per sample


def teds(pred_text: str, true_html: str, structure_only: bool = False) -> float:
    """TEDS of a prediction (HTML or Markdown) against a ground-truth HTML table; 0 without a table."""
    true = find_table(true_html)
    pred, _ = prediction_table(pred_text)
    if true is None or pred is None:
        return 0.0
    return teds_tables(pred, true, structure_only)


def score_sample(sample: dict[str, Any], prediction: str | None) -> tuple[dict[str, Any], bool]:
    """A table sample's per-sample fields (prediction None: failed or missing); has it a reference?"""
    reference = str(sample.get("html") or "")
    true = find_table(reference)
    pred, fmt = prediction_table(prediction) if prediction is not None else (None, "none")
    if true is None or pred is None:
        scores = {"teds": 0.0, "teds_struct": 0.0}
    else:
        scores = {
            "teds": teds_tables(pred, true),
            "teds_struct": teds_tables(pred, true, structure_only=True),
        }
    fields = {
        "reference": reference,
        "ref_chars": len(reference),
        "prediction_format": fmt,
        **{k: round(v, 6) for k, v in scores.items()},
    }
    return fields, true is not None
