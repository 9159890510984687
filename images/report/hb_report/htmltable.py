"""Tables from untrusted HTML, rebuilt safely: parsed, placed on a grid, compared, rendered escaped.

A model's table is never put into the page as HTML. The first ``<table>`` of a text is read with
the standard library's tolerant ``html.parser`` into rows of cells (text, colspan, rowspan, th or
td); the page gets a new table built from those cells: the text escaped, the spans sanitised ints,
no attribute of the input kept. Bounds: MAX_ROWS rows, MAX_CELLS cells a row, MAX_TOTAL_CELLS
cells a table, spans in
[1, MAX_SPAN], MAX_CELL_TEXT characters a cell (what is cut is said under the table).

Alignment (the differing-cell marks): each cell is placed on the grid as HTML places it (left to
right in its row, skipping the slots that a rowspan from above holds); a cell is marked when the
other table has no cell placed at the same (row, column), or that cell's text differs (whitespace
runs collapsed, stripped), or its colspan or rowspan differs. When one side has no table, nothing
is marked (the card says "no table"; TEDS is 0 then).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

from hb_report.text import esc

MAX_ROWS = 200
MAX_CELLS = 50
MAX_TOTAL_CELLS = 2000
MAX_SPAN = 10
MAX_CELL_TEXT = 300
_WS = re.compile(r"\s+")


@dataclass
class Cell:
    text: str = ""
    colspan: int = 1
    rowspan: int = 1
    header: bool = False

    @property
    def key(self) -> tuple[str, int, int]:
        return _WS.sub(" ", self.text).strip(), self.colspan, self.rowspan


@dataclass
class Table:
    rows: list[list[Cell]] = field(default_factory=list)
    clipped: bool = False  # rows, cells, spans or text were cut to the bounds


def span(value: str | None) -> int:
    """A colspan/rowspan attribute as an int in [1, MAX_SPAN]: its leading digits, else 1."""
    digits = re.match(r"\s*(\d{1,6})", value or "")
    return min(max(int(digits.group(1)), 1), MAX_SPAN) if digits else 1


class _Parser(HTMLParser):
    """The first <table>: its rows and cells; nested tables' text goes into the enclosing cell."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.table: Table | None = None
        self.depth = 0  # <table> nesting inside the first table
        self.done = False
        self.cell: Cell | None = None
        self.parts: list[str] = []
        self.cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self.done:
            return
        if tag == "table":
            self.depth += 1
            if self.table is None:
                self.table = Table()
            return
        if self.table is None or self.depth != 1:
            if tag == "br" and self.cell is not None:
                self.parts.append("\n")
            return
        if tag == "tr":
            self._close_cell()
            self._new_row()
        elif tag in ("td", "th"):
            self._close_cell()
            if not self.table.rows:
                self._new_row()
            a = dict(attrs)
            self.cell = Cell(header=tag == "th")
            self.cell.colspan, self.cell.rowspan = span(a.get("colspan")), span(a.get("rowspan"))
            for raw, value in ((a.get("colspan"), self.cell.colspan), (a.get("rowspan"), self.cell.rowspan)):
                if raw is not None and raw.strip().isdigit() and int(raw) != value:
                    self.table.clipped = True
        elif tag == "br" and self.cell is not None:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if self.done or self.table is None:
            return
        if tag == "table":
            self.depth -= 1
            if self.depth == 0:
                self._close_cell()
                self.done = True
        elif self.depth == 1 and tag in ("td", "th", "tr"):
            self._close_cell()

    def handle_data(self, data: str) -> None:
        if self.cell is not None and not self.done:
            self.parts.append(data)

    def _new_row(self) -> None:
        assert self.table is not None
        if len(self.table.rows) >= MAX_ROWS:
            self.table.clipped = True
            self.done = True
            return
        self.table.rows.append([])

    def _close_cell(self) -> None:
        if self.cell is None or self.table is None:
            return
        text = "".join(self.parts).strip()
        if len(text) > MAX_CELL_TEXT:
            text, self.table.clipped = text[:MAX_CELL_TEXT] + " …", True
        self.cell.text = text
        row = self.table.rows[-1]
        if len(row) < MAX_CELLS and self.cells < MAX_TOTAL_CELLS:
            row.append(self.cell)
            self.cells += 1
        else:
            self.table.clipped = True
        self.cell, self.parts = None, []


def parse_table(text: str) -> Table | None:
    """The first <table> of an HTML text as cells, or None when there is none."""
    parser = _Parser()
    parser.feed(text)
    parser.close()
    if parser.table is not None:
        parser._close_cell()
    return parser.table


def place(table: Table) -> dict[tuple[int, int], Cell]:
    """Each cell at the (row, column) HTML's table layout gives it (rowspans from above skipped)."""
    taken: set[tuple[int, int]] = set()
    anchors: dict[tuple[int, int], Cell] = {}
    for r, row in enumerate(table.rows):
        c = 0
        for cell in row:
            while (r, c) in taken:
                c += 1
            anchors[(r, c)] = cell
            for dr in range(cell.rowspan):
                for dc in range(cell.colspan):
                    taken.add((r + dr, c + dc))
            c += cell.colspan
    return anchors


def differing(mine: dict[tuple[int, int], Cell], other: dict[tuple[int, int], Cell]) -> dict[int, str]:
    """id() of each of my cells that differs from the other table's cell at its position -> why."""
    out: dict[int, str] = {}
    for pos, cell in mine.items():
        twin = other.get(pos)
        if twin is None:
            out[id(cell)] = "no cell at this position in the other table"
        elif twin.key[0] != cell.key[0]:
            out[id(cell)] = "text differs"
        elif twin.key[1:] != cell.key[1:]:
            out[id(cell)] = "colspan/rowspan differs"
    return out


def render(table: Table, marks: dict[int, str]) -> str:
    """The table rebuilt from its cells: escaped text, int spans, marked cells with class diff."""
    rows = []
    for row in table.rows:
        cells = []
        for cell in row:
            tag = "th" if cell.header else "td"
            attrs = "".join(
                f' {name}="{value}"'
                for name, value in (("colspan", cell.colspan), ("rowspan", cell.rowspan))
                if value != 1
            )
            why = marks.get(id(cell))
            if why:
                attrs += f' class="diff" title="{esc(why)}"'
            cells.append(f"<{tag}{attrs}>{esc(cell.text)}</{tag}>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    note = '<div class="muted">(cut to the display bounds)</div>' if table.clipped else ""
    return f'<table class="tbl">{"".join(rows)}</table>{note}'


def side_by_side(truth: Table | None, pred: Table | None) -> tuple[str, str, int]:
    """Both tables rendered with their differing cells marked, and the number of marked cells."""
    mt: dict[int, str] = {}
    mp: dict[int, str] = {}
    if truth and pred:  # with one side missing nothing is marked: the card says "no table"
        ta, pa = place(truth), place(pred)
        mt, mp = differing(ta, pa), differing(pa, ta)
    none = '<div class="txt muted">no table</div>'
    return (
        render(truth, mt) if truth else none,
        render(pred, mp) if pred else none,
        len(mt) + len(mp),
    )
