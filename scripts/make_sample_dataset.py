#!/usr/bin/env python3
"""Generate the demo's sample OCR dataset: printed document snippets with ground truth.

Layout (see "Dataset layout" in the design brief)::

    <out>/dataset.json      {"name": "sample-docs", "version": "1", "task": "ocr", ...}
    <out>/manifest.jsonl    {"category", "id", "image", "sha256", "size", "text"} per line
    <out>/images/doc-NNNN.png

Samples come in four layouts (``category``): ``line`` (one line), ``paragraph``
(2-5 wrapped lines), ``keyvalue`` (invoice-like "key  value" rows in two
columns) and ``table`` (a header and a few rows of 3-4 columns). Fonts vary
(DejaVu Sans / Serif / Mono, bold and oblique variants), so do sizes (18-40 px),
ink and paper tones, and a light degradation: pixel noise, a slight blur and a
rotation of at most 1.5 degrees. The ground truth ``text`` is the lines in
reading order joined by ``\\n``; the cells of one row are joined by one space.

Deterministic: sample ``i`` depends only on ``(seed, i)``, so the same seed gives
byte-identical images and the same manifest hash on the same Pillow/FreeType
(``--count 100`` extends the first 60 samples rather than changing them). The
DejaVu fonts (Debian package ``fonts-dejavu-core``) are used when present;
without them Pillow's built-in scalable font stands in (different pixels, so a
different manifest hash).

Idempotent: if ``<out>`` already holds this exact dataset (same dataset.json,
the manifest valid with every image hash checked, the right sample count)
nothing is written. Otherwise the dataset is written into a temporary sibling
directory and renamed into place.

Usage::

    python scripts/make_sample_dataset.py --out var/datasets/sample-docs/1 [--count 60] [--seed 7]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypedDict

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

try:
    from worker.manifest import ManifestError, validate_local
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from worker.manifest import ManifestError, validate_local

NAME = "sample-docs"
VERSION = "1"
DEFAULT_COUNT = 60
DEFAULT_SEED = 7
CATEGORIES = ("line", "paragraph", "keyvalue", "table")

FONT_DIRS = (
    "/usr/share/fonts/truetype/dejavu",  # Debian, Ubuntu (fonts-dejavu-core)
    "/usr/share/fonts/dejavu",  # Fedora
    "/usr/share/fonts/TTF",  # Arch
    "/usr/local/share/fonts",
)
FONT_FILES = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansCondensed.ttf",
)

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont


class WriteResult(TypedDict):
    """What :func:`write_dataset` did."""

    out: str
    count: int
    manifest_sha256: str
    created: bool  # False: the directory already held this exact dataset


# --------------------------------------------------------------------------- text


MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

SENTENCES = (
    "Payment is due within 30 days of the invoice date.",
    "Late payments are subject to interest at 1.5% per month.",
    "The goods remain the property of the seller until paid in full.",
    "Please check the delivery against this note and report any damage within 48 hours.",
    "All prices are shown in US dollars and exclude sales tax unless stated otherwise.",
    "This document was generated electronically and is valid without a signature.",
    "Returns are accepted within 14 days if the items are unused and in their original packaging.",
    "For questions about this statement, contact our accounts team on weekdays from 9:00 to 17:00.",
    "The agreement renews automatically for 12 months unless cancelled in writing.",
    "Shipping costs are calculated by weight and destination.",
    "Keep this receipt as proof of purchase for warranty claims.",
    "The meeting of the board will take place on the second Tuesday of each quarter.",
    "Both parties agree to keep the terms of this contract confidential.",
    "Your order has been dispatched and should arrive in 3 to 5 working days.",
    "Interest is calculated daily on the outstanding balance.",
    "The tenant shall pay the rent in advance on the first day of each month.",
    "Minutes of the previous meeting were approved without changes.",
    "Please allow 10 business days for the refund to appear on your account.",
    "A copy of this report has been sent to the finance department.",
    "Prices may change without notice; the price at the time of order applies.",
)

ITEMS = (
    "Paper A4 80gsm", "Toner cartridge", "Desk lamp", "USB-C cable 2m", "Consulting hours",
    "Office chair", "Printer ink black", "Stapler", "Notebook A5", "Monitor stand",
    "Shipping", "Annual licence", "Support plan", "Envelopes C4", "Label roll",
)  # fmt: skip


def _amount(rng: random.Random) -> str:
    value = rng.randint(1, 250_000) / 100
    currency = rng.choice(("$", "$", "$", "EUR ", "USD "))
    return f"{currency}{value:,.2f}"


def _date(rng: random.Random) -> str:
    year, month, day = rng.randint(2019, 2025), rng.randint(1, 12), rng.randint(1, 28)
    style = rng.randrange(4)
    if style == 0:
        return f"{year}-{month:02d}-{day:02d}"
    if style == 1:
        return f"{day:02d}/{month:02d}/{year}"
    if style == 2:
        return f"{MONTHS[month - 1]} {day}, {year}"
    return f"{day} {MONTHS[month - 1][:3]} {year}"


def _invoice(rng: random.Random) -> str:
    return f"INV-{rng.randint(2019, 2025)}-{rng.randint(1, 99999):05d}"


def _po(rng: random.Random) -> str:
    return f"PO-{rng.randint(10000, 99999)}"


def _customer(rng: random.Random) -> str:
    return f"C{rng.randint(100000, 999999)}"


def _account(rng: random.Random) -> str:
    return f"{rng.randint(10000000, 99999999)}"


def _code(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789") for _ in range(length))


def _iban(rng: random.Random) -> str:
    digits = f"{rng.randint(10, 99)}{rng.randint(10**17, 10**18 - 1)}"
    return f"{rng.choice(('DE', 'FR', 'NL', 'GB'))}{' '.join(digits[k : k + 4] for k in range(0, 20, 4))}"


def _tracking(rng: random.Random) -> str:
    numbers = f"{rng.randint(10, 99)} {rng.randint(1000, 9999)} {rng.randint(1000, 9999)}"
    return f"1Z {_code(rng, 3)} {_code(rng, 3)} {numbers}"


def _email(rng: random.Random) -> str:
    user = rng.choice(("billing", "accounts", "j.smith", "support", "orders"))
    domain = rng.choice(("example.com", "acme-supplies.co.uk", "northwind.io", "contoso.net"))
    return f"{user}@{domain}"


LINE_TEMPLATES: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"Invoice No. {_invoice(r)}",
    lambda r: f"Date of issue: {_date(r)}",
    lambda r: f"Payment due {_date(r)}",
    lambda r: f"Total due: {_amount(r)}",
    lambda r: f"Amount paid: {_amount(r)}",
    lambda r: f"Order reference {_po(r)}",
    lambda r: f"Customer ID: {_customer(r)}",
    lambda r: f"Please quote {_invoice(r)} with your payment.",
    lambda r: "Thank you for your business!",
    lambda r: f"Delivery note DN-{r.randint(1000, 9999)} dated {_date(r)}",
    lambda r: f"Balance carried forward: {_amount(r)}",
    lambda r: (
        f"Account No. {_account(r)}, sort code {r.randint(10, 99)}-{r.randint(10, 99)}-{r.randint(10, 99)}"
    ),
    lambda r: f"Page {r.randint(1, 3)} of {r.randint(3, 9)}",
    lambda r: f"Tel. +1 (555) {r.randint(100, 999)}-{r.randint(1000, 9999)}",
    lambda r: f"Statement period {_date(r)} to {_date(r)}",
    lambda r: f"IBAN {_iban(r)}",
    lambda r: f"Tracking number {_tracking(r)}",
    lambda r: f"Serial no. SN-{_code(r, 10)}",
    lambda r: f"Questions? Write to {_email(r)}",
    lambda r: r.choice(SENTENCES),
)

KEY_VALUES: tuple[tuple[str, Callable[[random.Random], str]], ...] = (
    ("Invoice No.", _invoice),
    ("Invoice date", _date),
    ("Due date", _date),
    ("Customer ID", _customer),
    ("Order No.", _po),
    ("Subtotal", _amount),
    ("Tax (8%)", _amount),
    ("Shipping", _amount),
    ("Total", _amount),
    ("Payment terms", lambda r: r.choice(("Net 30", "Net 14", "Due on receipt", "50% in advance"))),
    ("Account", _account),
    ("Currency", lambda r: r.choice(("USD", "EUR", "GBP", "CHF"))),
    ("Reference", lambda r: f"REF/{_code(r, 3)}/{r.randint(10, 99)}"),
    ("IBAN", _iban),
    ("Tracking no.", _tracking),
    ("Serial", lambda r: f"SN-{_code(r, 10)}"),
    ("Email", _email),
    ("Contact", lambda r: r.choice(("Anna Weber", "J. Smith", "Maria Lopez", "Tom O'Neil", "Li Wei"))),
)


# --------------------------------------------------------------------------- layout

# A row is a list of (x offset from the left margin, cell text).
Row = list[tuple[int, str]]


def _layout(rng: random.Random, category: str, font: FontT, size: int) -> list[Row]:
    def width(text: str) -> int:
        return int(font.getlength(text) + 0.5)

    if category == "line":
        return [[(0, LINE_TEMPLATES[rng.randrange(len(LINE_TEMPLATES))](rng))]]
    if category == "paragraph":
        start = rng.randrange(len(SENTENCES))
        text = " ".join(SENTENCES[(start + k) % len(SENTENCES)] for k in range(4))
        lines = textwrap.wrap(text, width=rng.randint(32, 54))
        return [[(0, line)] for line in lines[: rng.randint(2, 5)]]
    if category == "keyvalue":
        pairs = rng.sample(KEY_VALUES, rng.randint(3, 6))
        colon = rng.random() < 0.5
        keys = [f"{key}:" if colon else key for key, _ in pairs]
        values = [make(rng) for _, make in pairs]
        value_x = max(width(key) for key in keys) + rng.randint(size, 4 * size)
        right = rng.random() < 0.4
        value_right = value_x + max(width(value) for value in values)
        rows: list[Row] = []
        for key, value in zip(keys, values, strict=True):
            x = value_right - width(value) if right else value_x
            rows.append([(0, key), (x, value)])
        return rows
    # table
    header = rng.choice((("Item", "Qty", "Unit price", "Amount"), ("Description", "Qty", "Total")))
    body: list[list[str]] = []
    for item in rng.sample(ITEMS, rng.randint(2, 4)):
        qty = rng.randint(1, 24)
        unit = rng.randint(100, 50_000) / 100
        cells = [item, str(qty)]
        if len(header) == 4:
            cells.append(f"{unit:,.2f}")
        cells.append(f"{unit * qty:,.2f}")
        body.append(cells)
    table = [list(header), *body]
    gap = rng.randint(int(0.7 * size), 3 * size)
    xs = [0]
    for column in range(len(header) - 1):
        xs.append(xs[-1] + max(width(row[column]) for row in table) + gap)
    return [[(x, cell) for x, cell in zip(xs, row, strict=True)] for row in table]


# --------------------------------------------------------------------------- rendering


def find_fonts() -> list[Path]:
    """Return the DejaVu font files found on this machine (may be empty)."""
    for directory in FONT_DIRS:
        found = [Path(directory, name) for name in FONT_FILES if Path(directory, name).is_file()]
        if found:
            return found
    return []


def _load_font(fonts: list[Path], rng: random.Random, size: int) -> FontT:
    if fonts:
        return ImageFont.truetype(str(rng.choice(fonts)), size)
    try:
        return ImageFont.load_default(size)
    except (ImportError, OSError, TypeError) as exc:  # Pillow without FreeType, or older than 10.1
        raise SystemExit(
            "no usable font: install the DejaVu fonts (Debian/Ubuntu: apt-get install fonts-dejavu-core)"
            f" or a Pillow built with FreeType ({exc})"
        ) from None


def _noise_lut(sigma: float) -> list[int]:
    """Map a uniform byte to 128 + a Gaussian offset of the given sigma."""
    normal = statistics.NormalDist(0.0, sigma)
    return [max(0, min(255, 128 + round(normal.inv_cdf((u + 0.5) / 256)))) for u in range(256)]


def render_sample(index: int, seed: int, fonts: list[Path]) -> tuple[Image.Image, str, str]:
    """Render sample ``index``: return its image, ground-truth text and category."""
    rng = random.Random(seed * 1_000_003 + index)  # noqa: S311 - reproducible pictures, not secrets
    category = CATEGORIES[index % len(CATEGORIES)]
    size = rng.randint(18, 26) if rng.random() < 0.6 else rng.randint(27, 40)
    font = _load_font(fonts, rng, size)
    rows = _layout(rng, category, font, size)

    ascent, descent = font.getmetrics() if isinstance(font, ImageFont.FreeTypeFont) else (size, size // 4)
    line_height = int((ascent + descent) * rng.uniform(1.25, 1.6))
    margin = rng.randint(size + 8, 2 * size + 16)  # OCR detectors miss text cropped too tightly
    text_width = max(x + int(font.getlength(cell) + 0.5) for row in rows for x, cell in row)
    width = text_width + 2 * margin
    height = line_height * (len(rows) - 1) + ascent + descent + 2 * margin

    # Degrade, but keep it readable: the degradations scale with the glyph size and the contrast,
    # so that a small, faint line is never also heavily blurred and noisy.
    paper = rng.randint(180, 240)
    ink = rng.randint(15, 95)
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        for x, cell in row:
            draw.text((margin + x, margin + r * line_height), cell, fill=ink, font=font)

    angle = rng.uniform(-1.5, 1.5)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=paper)
    lowest = max(0.33, 10 / size)  # a low-resolution scan keeps glyphs at least ~10 px tall
    if rng.random() < 0.7 and lowest < 0.8:
        factor = rng.uniform(lowest, 0.8)
        small = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
        image = image.resize(small, Image.Resampling.BILINEAR).resize(image.size, Image.Resampling.BILINEAR)
    if rng.random() < 0.85:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, max(0.6, min(1.8, size / 16)))))
    sigma = rng.uniform(4.0, max(5.0, min(20.0, (paper - ink) / 6)))
    noise = Image.frombytes("L", image.size, rng.randbytes(image.size[0] * image.size[1]))
    image = ImageChops.add(image, noise.point(_noise_lut(sigma)), scale=1.0, offset=-128)
    if rng.random() < 0.5:  # JPEG artifacts of a scanner or a phone
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=rng.randint(25, 65))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("L")

    text = "\n".join(" ".join(cell for _, cell in row) for row in rows)
    return image, text, category


# --------------------------------------------------------------------------- writing


def dataset_info(count: int, seed: int) -> dict[str, str]:
    """Return the ``dataset.json`` content of the sample dataset."""
    return {
        "name": NAME,
        "version": VERSION,
        "task": "ocr",
        "description": (
            "Synthetic printed document snippets (lines, paragraphs, invoice key/value blocks, small tables)"
            f" with light noise, blur and rotation; {count} samples generated by"
            f" scripts/make_sample_dataset.py with seed {seed}."
        ),
        "license": "CC0-1.0",
    }


def _dump(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _is_complete(out: Path, count: int, info: dict[str, str]) -> str | None:
    """Return the manifest hash if ``out`` already holds this exact dataset."""
    try:
        if json.loads((out / "dataset.json").read_text("utf-8")) != info:
            return None
        summary = validate_local(out, verify_hashes=True)
    except (OSError, ValueError, ManifestError):
        return None
    return summary["manifest_sha256"] if summary["sample_count"] == count else None


def usable_fonts() -> list[Path]:
    """:func:`find_fonts`, with a warning on stderr when there are none (Pillow's font stands in)."""
    fonts = find_fonts()
    if not fonts:
        print(
            "warning: DejaVu fonts not found (Debian/Ubuntu: apt-get install fonts-dejavu-core);"
            " using Pillow's built-in font",
            file=sys.stderr,
        )
    return fonts


#: One generated sample: its id (also the image's file stem), its image, its other manifest fields.
Sample = tuple[str, Image.Image, dict[str, object]]


def write_samples(directory: Path, info: dict[str, str], samples: Iterable[Sample]) -> str:
    """Write ``dataset.json`` (``info``), ``images/<id>.png`` and ``manifest.jsonl`` into ``directory``.

    Each manifest line holds the sample's fields plus ``id``, ``image``, ``sha256`` and
    ``size``, keys sorted. Returns the manifest's sha256. Shared by the sample generators.
    """
    images = directory / "images"
    images.mkdir()
    (directory / "dataset.json").write_text(_dump(info) + "\n", "utf-8")
    digest = hashlib.sha256()
    with open(directory / "manifest.jsonl", "w", encoding="utf-8", newline="\n") as manifest:
        for sample_id, image, fields in samples:
            name = f"{sample_id}.png"
            path = images / name
            image.save(path, format="PNG", optimize=False, compress_level=9)
            data = path.read_bytes()
            line = _dump(
                {
                    **fields,
                    "id": sample_id,
                    "image": f"images/{name}",
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            )
            manifest.write(line + "\n")
            digest.update((line + "\n").encode("utf-8"))
    for entry in (directory, images):
        entry.chmod(0o755)  # containers read the dataset as a non-root user
    return digest.hexdigest()


def _samples(count: int, seed: int, fonts: list[Path]) -> Iterator[Sample]:
    for index in range(count):
        image, text, category = render_sample(index, seed, fonts)
        yield f"doc-{index:04d}", image, {"category": category, "text": text}


def _generate(directory: Path, count: int, seed: int) -> str:
    return write_samples(directory, dataset_info(count, seed), _samples(count, seed, usable_fonts()))


def write_dataset(out: Path | str, count: int = DEFAULT_COUNT, seed: int = DEFAULT_SEED) -> WriteResult:
    """Write the sample dataset to ``out``, unless it already holds it.

    Args:
        out: The dataset version directory, e.g. ``var/datasets/sample-docs/1``.
        count: How many samples (at least 1).
        seed: The generator seed.

    Returns:
        The directory, the count, the manifest hash and whether anything was written.

    Raises:
        ValueError: ``count`` is below 1.
        FileExistsError: ``out`` exists, is not empty and holds no ``dataset.json``
            (it is not replaced: it does not look like a dataset).
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    return write_generated(out, dataset_info(count, seed), count, lambda d: _generate(d, count, seed))


def write_generated(
    out: Path | str, info: dict[str, str], count: int, generate: Callable[[Path], str]
) -> WriteResult:
    """Write a generated dataset to ``out`` unless it already holds it (shared by the sample generators).

    ``generate(directory)`` writes ``dataset.json`` (equal to ``info``), the manifest and the
    images into an empty temporary directory and returns the manifest's sha256; the directory
    is then renamed into place. ``out`` is left alone when it already holds a valid dataset
    whose ``dataset.json`` equals ``info`` with ``count`` samples.
    """
    out = Path(out).absolute()
    existing = _is_complete(out, count, info)
    if existing is not None:
        return WriteResult(out=str(out), count=count, manifest_sha256=existing, created=False)
    if out.exists() and any(out.iterdir()) and not (out / "dataset.json").exists():
        raise FileExistsError(f"{out} exists and is not a dataset directory: not replacing it")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        sha = generate(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "data")
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WriteResult(out=str(out), count=count, manifest_sha256=sha, created=True)


def generator_cli(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    write: Callable[[argparse.Namespace], WriteResult],
    *,
    count: int,
    seed: int,
) -> int:
    """The command line every sample-dataset generator shares: ``--out``, ``--count`` and
    ``--seed`` on top of ``parser``'s own arguments, then ``write(args)`` and what it did."""
    parser.add_argument("--out", required=True, type=Path, help="dataset version directory to write")
    parser.add_argument("--count", type=int, default=count, help=f"number of samples (default {count})")
    parser.add_argument("--seed", type=int, default=seed, help=f"generator seed (default {seed})")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")
    started = time.monotonic()
    try:
        result = write(args)
    except FileExistsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = "written" if result["created"] else "already complete, nothing to do"
    print(f"{result['out']}: {state} ({time.monotonic() - started:.1f}s)")
    print(f"samples: {result['count']}")
    print(f"manifest sha256: {result['manifest_sha256']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    return generator_cli(
        parser,
        argv,
        lambda a: write_dataset(a.out, a.count, a.seed),
        count=DEFAULT_COUNT,
        seed=DEFAULT_SEED,
    )


if __name__ == "__main__":
    sys.exit(main())
