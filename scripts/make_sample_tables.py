#!/usr/bin/env python3
"""Generate the sample table dataset: rendered tables with their HTML as ground truth.

Layout (the one of scripts/make_sample_dataset.py, task ``table``)::

    <out>/dataset.json      {"name": "sample-tables", "version": "1", "task": "table", ...}
    <out>/manifest.jsonl    {"category", "html", "id", "image", "sha256", "size"} per line
    <out>/images/table-NNNN.png

Every table has a header and 2-5 body rows of 3-5 columns, in four layouts
(``category``): ``plain`` (no spans), ``total`` (invoice lines closed by a "Total"
row whose label spans the columns before the amount: a colspan), ``grouped-header``
(a two-level header: column groups with colspan, the other header cells with
rowspan 2) and ``grouped-rows`` (a first column whose group labels span 2-3 body
rows: rowspans). Fonts are DejaVu Sans or Serif (a bold header half of the time),
16-24 px; tables are ruled on every cell edge, or (``plain`` and ``total`` only)
with horizontal rules alone; paper and ink tones vary and a light pixel noise is
added, no rotation or blur (the subject is the structure, not a hard scan).

The ground truth ``html`` is written as PubTabNet writes it, the form the eval
image scores (images/eval/hb_table.py, docs/metrics.md)::

    <table><thead><tr><td>..</td>..</tr></thead><tbody><tr><td colspan="2">..</td>..</tr>..</tbody></table>

header cells are ``td`` (PubTabNet's convention; the official TEDS treats ``th`` as
no cell), ``colspan``/``rowspan`` appear only when above 1, the cell text is
HTML-escaped.

Deterministic and idempotent exactly as make_sample_dataset.py (whose font,
noise and writing helpers this script imports): sample ``i`` depends only on
``(seed, i)``; an ``<out>`` that already holds this exact dataset is left alone.

Usage::

    python scripts/make_sample_tables.py --out var/datasets/sample-tables/1 [--count 24] [--seed 11]
"""

from __future__ import annotations

import argparse
import html
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageChops, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_dataset import (  # the sibling script, importable from anywhere
    ITEMS,
    FontT,
    Sample,
    WriteResult,
    _amount,
    _load_font,
    _noise_lut,
    generator_cli,
    usable_fonts,
    write_generated,
    write_samples,
)

NAME = "sample-tables"
VERSION = "1"
DEFAULT_COUNT = 24
DEFAULT_SEED = 11
CATEGORIES = ("plain", "total", "grouped-header", "grouped-rows")
# Upright faces only: Sans and Serif (make_sample_dataset.FONT_FILES order: regular, bold).
FACES = (("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"), ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"))


# NamedTuples, not dataclasses: the script is also loaded by file path (tests, validate_image), without
# a sys.modules entry, which dataclasses need to resolve postponed annotations.
class Cell(NamedTuple):
    row: int
    col: int
    text: str
    rowspan: int = 1
    colspan: int = 1
    numeric: bool = False


class Table(NamedTuple):
    header_rows: int
    rows: int
    cols: int
    cells: tuple[Cell, ...]

    def html(self) -> str:
        """The PubTabNet form of the table (see the module docstring)."""
        out = ["<table><thead>"]
        for r in range(self.rows):
            if r == self.header_rows:
                out.append("</thead><tbody>")
            out.append("<tr>")
            for c in sorted((c for c in self.cells if c.row == r), key=lambda c: c.col):
                spans = "".join(
                    f' {name}="{n}"' for name, n in (("rowspan", c.rowspan), ("colspan", c.colspan)) if n > 1
                )
                out.append(f"<td{spans}>{html.escape(c.text, quote=False)}</td>")
            out.append("</tr>")
        out.append("</tbody></table>")
        return "".join(out)


# --------------------------------------------------------------------------- content

REGIONS = ("North", "South", "East", "West", "Central", "Overseas", "Online", "Retail")
GROUPS = ("Hardware", "Software", "Services", "Supplies")
METRICS = (("Sales", ("2023", "2024")), ("Units", ("Q1", "Q2")), ("Cost", ("Plan", "Actual")))


def _number(rng: random.Random) -> str:
    return f"{rng.randint(10, 99_999):,}"


def _percent(rng: random.Random) -> str:
    return f"{rng.uniform(-20, 40):+.1f}%"


def _grid(rows: list[list[str]], header_rows: int = 1, numeric_from: int = 1) -> list[Cell]:
    return [
        Cell(r, c, text, numeric=r >= header_rows and c >= numeric_from)
        for r, row in enumerate(rows)
        for c, text in enumerate(row)
    ]


def _lines_table(rng: random.Random, with_total: bool) -> Table:
    """``plain`` (invoice lines) or, ``with_total``, ``total`` (closed by a spanning total row)."""
    header = ["Item", "Qty", "Unit price", "Amount"][: rng.choice((3, 4))]
    if len(header) == 3:
        header[2] = "Amount"
    body: list[list[str]] = []
    total = 0.0
    for item in rng.sample(ITEMS, rng.randint(2, 4)):
        qty, unit = rng.randint(1, 24), rng.randint(100, 50_000) / 100
        total += qty * unit
        body.append([item, str(qty), *([f"{unit:,.2f}"] if len(header) == 4 else []), f"{qty * unit:,.2f}"])
    cells = _grid([header, *body])
    rows = 1 + len(body)
    if with_total:
        label = rng.choice(("Total", "Total due", "Subtotal"))
        cells += [
            Cell(rows, 0, label, colspan=len(header) - 1),
            Cell(rows, len(header) - 1, f"{total:,.2f}", numeric=True),
        ]
        rows += 1
    return Table(1, rows, len(header), tuple(cells))


def _grouped_header_table(rng: random.Random) -> Table:
    groups = rng.sample(METRICS, rng.choice((1, 2)))
    first = rng.choice(("Region", "Office", "Channel"))
    extra = rng.random() < 0.5  # a last ungrouped column, rowspan 2 like the first
    cols = 1 + 2 * len(groups) + extra
    cells = [Cell(0, 0, first, rowspan=2)]
    for g, (name, subs) in enumerate(groups):
        cells.append(Cell(0, 1 + 2 * g, name, colspan=2))
        cells += [Cell(1, 1 + 2 * g + k, sub) for k, sub in enumerate(subs)]
    if extra:
        cells.append(Cell(0, cols - 1, "Change", rowspan=2))
    names = rng.sample(REGIONS, rng.randint(2, 4))
    for r, name in enumerate(names, start=2):
        cells.append(Cell(r, 0, name))
        cells += [Cell(r, c, _number(rng), numeric=True) for c in range(1, 1 + 2 * len(groups))]
        if extra:
            cells.append(Cell(r, cols - 1, _percent(rng), numeric=True))
    return Table(2, 2 + len(names), cols, tuple(cells))


def _grouped_rows_table(rng: random.Random) -> Table:
    header = ["Group", "Product", "Units", "Price"][: rng.choice((3, 4))]
    cells = [Cell(0, c, text) for c, text in enumerate(header)]
    r = 1
    for group in rng.sample(GROUPS, 2):
        span = rng.randint(1, 3) if r > 1 else rng.randint(2, 3)  # at least one real rowspan
        cells.append(Cell(r, 0, group, rowspan=span))
        for item in rng.sample(ITEMS, span):
            cells.append(Cell(r, 1, item))
            cells.append(Cell(r, 2, str(rng.randint(1, 500)), numeric=True))
            if len(header) == 4:
                cells.append(Cell(r, 3, _amount(rng), numeric=True))
            r += 1
    return Table(1, r, len(header), tuple(cells))


def make_table(rng: random.Random, category: str) -> Table:
    """A table of ``category`` (see the module docstring)."""
    if category in ("plain", "total"):
        return _lines_table(rng, with_total=category == "total")
    if category == "grouped-header":
        return _grouped_header_table(rng)
    if category == "grouped-rows":
        return _grouped_rows_table(rng)
    raise ValueError(f"unknown category {category!r}")


# --------------------------------------------------------------------------- rendering


def _faces(fonts: list[Path]) -> list[tuple[Path, Path]]:
    by_name = {p.name: p for p in fonts}
    return [(by_name[a], by_name[b]) for a, b in FACES if a in by_name and b in by_name]


def _font(
    faces: list[tuple[Path, Path]], fonts: list[Path], rng: random.Random, size: int
) -> tuple[FontT, FontT]:
    if faces:
        regular, bold = rng.choice(faces)
        return ImageFont.truetype(str(regular), size), ImageFont.truetype(str(bold), size)
    font = _load_font(fonts, rng, size)  # no DejaVu: Pillow's built-in font for both
    return font, font


def _column_edges(table: Table, need: Callable[[Cell], int]) -> list[int]:
    """x of each column's left edge, and the right edge last: every cell gets the width it needs."""
    widths = [0] * table.cols
    for cell in table.cells:
        if cell.colspan == 1:
            widths[cell.col] = max(widths[cell.col], need(cell))
    for cell in table.cells:
        spanned = range(cell.col, cell.col + cell.colspan)
        short = max(0, need(cell) - sum(widths[c] for c in spanned))
        for k, c in enumerate(spanned):  # share a spanning cell's shortfall over its columns
            widths[c] += short // cell.colspan + (k < short % cell.colspan)
    xs = [0]
    for w in widths:
        xs.append(xs[-1] + w)
    return xs


def render_table(table: Table, rng: random.Random, fonts: list[Path]) -> Image.Image:
    """Draw ``table``: column widths from the widest single-column cell, spans widened to fit."""
    size = rng.randint(16, 24)
    regular, bold = _font(_faces(fonts), fonts, rng, size)
    header_font = bold if rng.random() < 0.5 else regular
    pad_x, pad_y = rng.randint(size // 2, size), rng.randint(size // 3, size // 2 + 2)
    ascent, descent = (
        regular.getmetrics() if isinstance(regular, ImageFont.FreeTypeFont) else (size, size // 4)
    )
    row_h = ascent + descent + 2 * pad_y

    def font_of(cell: Cell) -> FontT:
        return header_font if cell.row < table.header_rows else regular

    def need(cell: Cell) -> int:
        return int(font_of(cell).getlength(cell.text) + 0.5) + 2 * pad_x

    xs = _column_edges(table, need)

    margin = rng.randint(16, 40)
    paper, ink = rng.randint(225, 255), rng.randint(0, 60)
    image = Image.new("L", (xs[-1] + 2 * margin + 1, table.rows * row_h + 2 * margin + 1), paper)
    draw = ImageDraw.Draw(image)
    ruled = table.header_rows > 1 or any(c.rowspan > 1 for c in table.cells) or rng.random() < 0.6
    line = rng.choice((1, 1, 2))
    for cell in table.cells:
        x0, x1 = margin + xs[cell.col], margin + xs[cell.col + cell.colspan]
        y0, y1 = margin + cell.row * row_h, margin + (cell.row + cell.rowspan) * row_h
        if ruled:
            draw.rectangle((x0, y0, x1, y1), outline=ink, width=line)
        font = font_of(cell)
        text_w = font.getlength(cell.text)
        if cell.numeric:
            x = x1 - pad_x - text_w
        elif cell.row < table.header_rows or cell.colspan > 1:
            x = (x0 + x1 - text_w) / 2
        else:
            x = x0 + pad_x
        draw.text((x, (y0 + y1 - ascent - descent) / 2), cell.text, fill=ink, font=font)
    if not ruled:  # horizontal rules only: above, below the header, below the table
        for y in (0, table.header_rows * row_h, table.rows * row_h):
            draw.line((margin, margin + y, margin + xs[-1], margin + y), fill=ink, width=line)

    sigma = rng.uniform(2.0, 8.0)
    noise = Image.frombytes("L", image.size, rng.randbytes(image.size[0] * image.size[1]))
    return ImageChops.add(image, noise.point(_noise_lut(sigma)), scale=1.0, offset=-128)


def render_sample(index: int, seed: int, fonts: list[Path]) -> tuple[Image.Image, str, str]:
    """Render sample ``index``: return its image, ground-truth HTML and category."""
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 - reproducible pictures, not secrets
    category = CATEGORIES[index % len(CATEGORIES)]
    table = make_table(rng, category)
    return render_table(table, rng, fonts), table.html(), category


# --------------------------------------------------------------------------- writing


def dataset_info(count: int, seed: int) -> dict[str, str]:
    """Return the ``dataset.json`` content of the sample table dataset."""
    return {
        "name": NAME,
        "version": VERSION,
        "task": "table",
        "description": (
            "Synthetic rendered tables (plain, with a total row, with a two-level header, with row groups;"
            f" colspan and rowspan cells) with their HTML; {count} samples generated by"
            f" scripts/make_sample_tables.py with seed {seed}."
        ),
        "license": "CC0-1.0",
    }


def _samples(count: int, seed: int, fonts: list[Path]) -> Iterator[Sample]:
    for index in range(count):
        image, table_html, category = render_sample(index, seed, fonts)
        yield f"table-{index:04d}", image, {"category": category, "html": table_html}


def _generate(directory: Path, count: int, seed: int) -> str:
    return write_samples(directory, dataset_info(count, seed), _samples(count, seed, usable_fonts()))


def write_dataset(out: Path | str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> WriteResult:
    """Write the sample table dataset to ``out``, unless it already holds it.

    Args, return value and errors as make_sample_dataset.write_dataset.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    return write_generated(out, dataset_info(count, seed), count, lambda d: _generate(d, count, seed))


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    return generator_cli(
        parser, argv, lambda a: write_dataset(a.out, a.count, a.seed), count=DEFAULT_COUNT, seed=DEFAULT_SEED
    )


if __name__ == "__main__":
    sys.exit(main())
