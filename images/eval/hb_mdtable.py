"""GFM pipe tables to HTML: the rule hb_table (a Markdown table prediction) and hb_page (the tables of
a page) convert with, documented in hb_table.NORMALIZATION['markdown'].

Standard library only: the report image ships this same file beside hb_stats, so its gallery shows a
Markdown prediction as the very table the eval image scored.
"""

from __future__ import annotations

import html as html_lib
import re
from dataclasses import dataclass

_DELIM_CELL = re.compile(r"^\s*:?-{1,}:?\s*$")
_KEEP_TAGS = re.compile(r"(</?(?:b|i|sup|sub)>|<br\s*/?>)", re.IGNORECASE)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")


def _split_row(line: str) -> list[str]:
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells, cur, i = [], [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s) and s[i + 1] == "|":
            cur.append("|")
            i += 2
            continue
        if s[i] == "|":
            cells.append("".join(cur))
            cur = []
        else:
            cur.append(s[i])
        i += 1
    cells.append("".join(cur))
    return [c.strip() for c in cells]


def _is_delimiter(line: str) -> bool:
    if "-" not in line:
        return False
    cells = _split_row(line)
    return bool(cells) and all(_DELIM_CELL.match(c) for c in cells)


def _cell_html(text: str) -> str:
    parts = _KEEP_TAGS.split(text)
    out = []
    for k, part in enumerate(parts):
        if k % 2:  # a kept inline tag
            out.append("<br>" if part.lower().startswith("<br") else part.lower())
        else:
            escaped = html_lib.escape(part, quote=False)
            out.append(_BOLD.sub(r"<b>\2</b>", escaped))
    return "".join(out)


@dataclass(frozen=True)
class MarkdownTable:
    start: int  # first line (0-based) of the table in the text
    end: int  # one past its last line
    html: str


def markdown_tables(text: str) -> list[MarkdownTable]:
    """Every GFM pipe table of a text, in order, converted to HTML (rule: NORMALIZATION['markdown'])."""
    lines = text.splitlines()
    found: list[MarkdownTable] = []
    i = 0
    while i + 1 < len(lines):
        head, delim = lines[i], lines[i + 1]
        if "|" in head and _is_delimiter(delim):
            header = _split_row(head)
            width = len(header)
            if len(_split_row(delim)) == width:
                rows = []
                j = i + 2
                while j < len(lines) and "|" in lines[j] and lines[j].strip():
                    cells = _split_row(lines[j])
                    rows.append((cells + [""] * width)[:width])
                    j += 1
                body = "".join(
                    "<tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in r) + "</tr>" for r in rows
                )
                thead = "<thead><tr>" + "".join(f"<td>{_cell_html(c)}</td>" for c in header) + "</tr></thead>"
                found.append(MarkdownTable(i, j, f"<table>{thead}<tbody>{body}</tbody></table>"))
                i = j
                continue
        i += 1
    return found


def markdown_table_to_html(text: str) -> str | None:
    """The first GFM table of a text as HTML, or None."""
    tables = markdown_tables(text)
    return tables[0].html if tables else None
