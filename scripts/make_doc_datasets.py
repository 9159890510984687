#!/usr/bin/env python3
"""Generate the sample datasets of the ``page`` and ``kie`` tasks, like ``sample-docs`` (ocr).

Same layout, determinism and idempotence as scripts/make_sample_dataset.py, whose
helpers (fonts, text pools, dates and amounts, the write-into-a-temporary-
directory-and-rename) are imported, not copied::

    <out>/dataset.json      {"name": "sample-pages" | "sample-receipts", "version": "1", "task": ...}
    <out>/manifest.jsonl    {"category", "id", "image", "sha256", "size", <ground truth>} per line
    <out>/images/page-NNNN.png | receipt-NNNN.png

- ``page`` (``sample-pages``): a rendered A4-like page of several blocks in one
  column: a title, paragraphs, sometimes a section heading, and a small ruled
  table of 3-4 columns. Ground truth ``markdown``: the title as ``# ...``, a
  heading as ``## ...``, each paragraph as one line (its wrapped lines joined by a
  space), the table as a GFM pipe table; blocks separated by a blank line.
- ``kie`` (``sample-receipts``): a rendered till receipt (store, date, line
  items, total). Ground truth ``fields`` (CORD-like, nested line items)::

      {"store": "...", "date": "...", "items": [{"name": "...", "qty": "2", "price": "7.00"}],
       "total": "..."}

  Every value is a string, as printed on the receipt (``price`` is the line's
  amount, qty times the unit price).

Sample ``i`` depends only on ``(seed, i)``; the images are clean renders with
light noise and a slight blur (no rotation: layout models are the point here, not
deskewing).

Usage::

    python scripts/make_doc_datasets.py page --out var/datasets/sample-pages/1 [--count 12] [--seed 7]
    python scripts/make_doc_datasets.py kie --out var/datasets/sample-receipts/1 [--count 12] [--seed 7]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_sample_dataset import (
    ITEMS,
    SENTENCES,
    FontT,
    WriteResult,
    _date,
    _dump,
    _noise_lut,
    find_fonts,
    generator_cli,
    write_generated,
)

VERSION = "1"
DEFAULT_COUNT = 12
DEFAULT_SEED = 7

TITLES = (
    "Quarterly Operations Report", "Supplier Agreement Summary", "Annual Maintenance Plan",
    "Office Move Checklist", "Customer Service Review", "Travel Expense Policy",
    "Warehouse Inventory Notes", "Project Status Update", "Board Meeting Minutes",
    "Product Returns Overview",
)  # fmt: skip
HEADINGS = ("Background", "Summary", "Next steps", "Costs", "Schedule", "Terms", "Results", "Notes")
STORES = (
    "Corner Market", "Green Leaf Cafe", "City Hardware", "Bright Books", "Harbor Bakery",
    "Sunrise Pharmacy", "Metro Electronics", "Blue Door Deli",
)  # fmt: skip
GROCERIES = (
    "Coffee beans", "Whole milk", "Rye bread", "Olive oil", "Green tea", "Apples", "Cheddar",
    "Pasta", "Tomato sauce", "Orange juice", "Batteries AA", "Notebook", "Croissant", "Yogurt",
)  # fmt: skip
STREETS = ("High Street", "Main Road", "Station Square", "Park Lane", "Mill Street", "Bridge Road")


def _font(fonts: list[Path], name: str, size: int) -> FontT:
    """A DejaVu face by file name (the first font found when that one is absent)."""
    for path in fonts:
        if path.name == name:
            return ImageFont.truetype(str(path), size)
    if fonts:
        return ImageFont.truetype(str(fonts[0]), size)
    return ImageFont.load_default(size)


def _degrade(image: Image.Image, rng: random.Random) -> Image.Image:
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    noise = Image.frombytes("L", image.size, rng.randbytes(image.size[0] * image.size[1]))
    return ImageChops.add(image, noise.point(_noise_lut(rng.uniform(3.0, 6.0))), scale=1.0, offset=-128)


# --------------------------------------------------------------------------- page


class Block(NamedTuple):
    kind: str  # "title" | "heading" | "paragraph" | "table"
    text: str = ""
    rows: list[list[str]] | None = None


def _page_blocks(rng: random.Random) -> list[Block]:
    blocks = [Block("title", rng.choice(TITLES))]
    start = rng.randrange(len(SENTENCES))
    sentences = [SENTENCES[(start + k) % len(SENTENCES)] for k in range(len(SENTENCES))]

    def paragraph() -> Block:
        n = rng.randint(2, 3)
        text = " ".join(sentences[:n])
        del sentences[:n]
        return Block("paragraph", text)

    blocks.append(paragraph())
    if rng.random() < 0.6:
        blocks.append(Block("heading", rng.choice(HEADINGS)))
    blocks.append(paragraph())
    header = rng.choice((["Item", "Qty", "Unit price", "Amount"], ["Description", "Qty", "Total"]))
    rows = [header]
    for item in rng.sample(ITEMS, rng.randint(2, 4)):
        qty = rng.randint(1, 24)
        unit = rng.randint(100, 50_000) / 100
        cells = [item, str(qty)]
        if len(header) == 4:
            cells.append(f"{unit:,.2f}")
        cells.append(f"{unit * qty:,.2f}")
        rows.append(cells)
    table = Block("table", rows=rows)
    if rng.random() < 0.5:
        blocks.append(table)
        blocks.append(paragraph())
    else:
        blocks.append(table)
    return blocks


def page_markdown(blocks: list[Block]) -> str:
    """The ground truth: the blocks as Markdown (``#`` title, ``##`` heading, GFM pipe table)."""
    parts: list[str] = []
    for b in blocks:
        if b.kind == "title":
            parts.append(f"# {b.text}")
        elif b.kind == "heading":
            parts.append(f"## {b.text}")
        elif b.kind == "paragraph":
            parts.append(b.text)
        else:
            assert b.rows
            lines = ["| " + " | ".join(b.rows[0]) + " |", "|" + "---|" * len(b.rows[0])]
            lines += ["| " + " | ".join(r) + " |" for r in b.rows[1:]]
            parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def render_page(index: int, seed: int, fonts: list[Path]) -> tuple[Image.Image, dict[str, Any], str]:
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 - reproducible pictures, not secrets
    blocks = _page_blocks(rng)
    width, margin = 1100, 80
    body_size = rng.randint(20, 24)
    serif = rng.random() < 0.5
    body = _font(fonts, "DejaVuSerif.ttf" if serif else "DejaVuSans.ttf", body_size)
    bold = _font(fonts, "DejaVuSerif-Bold.ttf" if serif else "DejaVuSans-Bold.ttf", body_size)
    title_size, heading_size = rng.randint(36, 42), rng.randint(27, 30)
    title_font = _font(fonts, "DejaVuSans-Bold.ttf", title_size)
    heading_font = _font(fonts, "DejaVuSans-Bold.ttf", heading_size)
    line_h = int(body_size * 1.55)
    chars = int((width - 2 * margin) / (body_size * 0.56))

    image = Image.new("L", (width, 1500), 255)
    draw = ImageDraw.Draw(image)
    y = margin
    for b in blocks:
        if b.kind == "title":
            draw.text((margin, y), b.text, fill=0, font=title_font)
            y += int(title_size * 1.3) + 36
        elif b.kind == "heading":
            draw.text((margin, y), b.text, fill=0, font=heading_font)
            y += int(heading_size * 1.3) + 20
        elif b.kind == "paragraph":
            for line in textwrap.wrap(b.text, width=chars):
                draw.text((margin, y), line, fill=20, font=body)
                y += line_h
            y += 30
        else:
            assert b.rows
            pad = 14
            cols = len(b.rows[0])
            col_w = [max(int(body.getlength(r[c]) + 0.5) for r in b.rows) + 2 * pad + 30 for c in range(cols)]
            row_h = line_h + 2 * pad - 6
            x0 = margin
            xs = [x0]
            for w in col_w:
                xs.append(xs[-1] + w)
            top = y
            for r, row in enumerate(b.rows):
                for c, cell in enumerate(row):
                    draw.text((xs[c] + pad, y + pad - 2), cell, fill=0, font=bold if r == 0 else body)
                y += row_h
            for k in range(len(b.rows) + 1):
                draw.line([(xs[0], top + k * row_h), (xs[-1], top + k * row_h)], fill=0, width=2)
            for x in xs:
                draw.line([(x, top), (x, y)], fill=0, width=2)
            y += 40
    image = image.crop((0, 0, width, min(1500, y + margin)))
    return _degrade(image, rng), {"markdown": page_markdown(blocks)}, "page"


# --------------------------------------------------------------------------- kie (receipts)


def receipt_fields(rng: random.Random) -> dict[str, Any]:
    """The receipt's fields (the ground truth): strings as printed."""
    items = []
    for name in rng.sample(GROCERIES, rng.randint(2, 5)):
        qty = rng.randint(1, 4)
        unit = rng.randint(50, 2_500) / 100
        items.append({"name": name, "qty": str(qty), "price": f"{qty * unit:.2f}"})
    total = sum(float(item["price"]) for item in items)
    return {"store": rng.choice(STORES), "date": _date(rng), "items": items, "total": f"{total:.2f}"}


def render_receipt(index: int, seed: int, fonts: list[Path]) -> tuple[Image.Image, dict[str, Any], str]:
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311
    fields = receipt_fields(rng)
    size = rng.randint(22, 26)
    mono = _font(fonts, "DejaVuSansMono.ttf", size)
    mono_bold = _font(fonts, "DejaVuSansMono-Bold.ttf", size + 6)
    street = f"{rng.randint(1, 240)} {rng.choice(STREETS)}"
    lines: list[tuple[str, FontT]] = [
        (fields["store"], mono_bold),
        (street, mono),
        (f"Date: {fields['date']}", mono),
    ]
    lines.append(("-" * 30, mono))
    for item in fields["items"]:
        lines.append((f"{item['qty']} x {item['name']}".ljust(22) + item["price"].rjust(8), mono))
    lines.append(("-" * 30, mono))
    lines.append(("TOTAL".ljust(22) + fields["total"].rjust(8), mono_bold))
    lines.append(("Thank you!", mono))
    line_h = int(size * 1.6)
    width = int(max(font.getlength(text) for text, font in lines)) + 120
    height = line_h * len(lines) + 140
    image = Image.new("L", (width, height), rng.randint(235, 250))
    draw = ImageDraw.Draw(image)
    for i, (text, font) in enumerate(lines):
        draw.text((60, 60 + i * line_h), text, fill=rng.randint(10, 50), font=font)
    return _degrade(image, rng), {"fields": fields}, "receipt"


# --------------------------------------------------------------------------- writing


class Kind(NamedTuple):
    name: str
    task: str
    prefix: str
    render: Callable[[int, int, list[Path]], tuple[Image.Image, dict[str, Any], str]]
    description: str


KINDS = {
    "page": Kind(
        "sample-pages",
        "page",
        "page",
        render_page,
        "Synthetic one-column pages (a title, paragraphs, a section heading, a small ruled table) with "
        "their Markdown",
    ),
    "kie": Kind(
        "sample-receipts",
        "kie",
        "receipt",
        render_receipt,
        "Synthetic till receipts with their fields (store, date, line items with name, qty and price, total)",
    ),
}


def dataset_info(kind: Kind, count: int, seed: int) -> dict[str, str]:
    return {
        "name": kind.name,
        "version": VERSION,
        "task": kind.task,
        "description": f"{kind.description}; {count} samples generated by scripts/make_doc_datasets.py "
        f"with seed {seed}.",
        "license": "CC0-1.0",
    }


def _generate(directory: Path, kind: Kind, count: int, seed: int) -> str:
    fonts = find_fonts()
    images = directory / "images"
    images.mkdir()
    (directory / "dataset.json").write_text(_dump(dataset_info(kind, count, seed)) + "\n", "utf-8")
    digest = hashlib.sha256()
    with open(directory / "manifest.jsonl", "w", encoding="utf-8", newline="\n") as manifest:
        for index in range(count):
            image, truth, category = kind.render(index, seed, fonts)
            sid = f"{kind.prefix}-{index:04d}"
            path = images / f"{sid}.png"
            image.save(path, format="PNG", optimize=False, compress_level=9)
            data = path.read_bytes()
            row: dict[str, Any] = {"category": category, "id": sid, "image": f"images/{sid}.png"}
            row |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), **truth}
            line = _dump(row)
            manifest.write(line + "\n")
            digest.update((line + "\n").encode("utf-8"))
    for entry in (directory, images):
        entry.chmod(0o755)  # containers read the dataset as a non-root user
    return digest.hexdigest()


def write_dataset(
    task: str, out: Path | str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED
) -> WriteResult:
    """Write the ``task`` sample dataset (``page`` or ``kie``) to ``out``, unless it already holds it."""
    if count < 1:
        raise ValueError("count must be at least 1")
    kind = KINDS[task]
    return write_generated(
        out, dataset_info(kind, count, seed), count, lambda d: _generate(d, kind, count, seed)
    )


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("task", choices=sorted(KINDS))
    return generator_cli(
        parser,
        argv,
        lambda a: write_dataset(a.task, a.out, a.count, a.seed),
        count=DEFAULT_COUNT,
        seed=DEFAULT_SEED,
    )


if __name__ == "__main__":
    sys.exit(main())
