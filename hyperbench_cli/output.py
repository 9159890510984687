"""How answers are shown: cells of tables, sizes and times, and the table shapes every command uses."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.table import Table
from rich.text import Text

from hyperbench_cli.client import clean


def cell(v: Any, limit: int = 300) -> str:
    """A value as one table cell: ``-`` for nothing, floats to 4 significant digits, JSON for containers."""
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict | list):
        v = json.dumps(v, ensure_ascii=False)
    return clean(str(v), limit)


def size(n: Any) -> str:
    """A byte count in decimal units (``1.2 MB``)."""
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "-"


def when(ts: Any) -> str:
    """An ISO timestamp to the second, with a space for the ``T``."""
    return str(ts)[:19].replace("T", " ") if ts else "-"


def number4(value: Any) -> str:
    """A metric's value to 4 decimals, or ``-``."""
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def ci95(ci: Any) -> str:
    """A 95% confidence interval ``[lo, hi]`` to 4 decimals, or ``-`` unless both ends are numbers."""
    ci = ci or [None, None]
    lo, hi = [*ci, None, None][:2] if isinstance(ci, list) else (None, None)
    return f"[{lo:.4f}, {hi:.4f}]" if isinstance(lo, int | float) and isinstance(hi, int | float) else "-"


def table(title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> Table:
    """Columns with headers; each row's values as cells (a Text is kept as it is, with its style)."""
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for row in rows:
        t.add_row(*(v if isinstance(v, Text) else Text(cell(v)) for v in row))
    return t


def fields(title: str, data: dict[str, Any], keys: Iterable[str] | None = None) -> Table:
    """One object as ``field  value`` lines (all its keys, or ``keys`` it has)."""
    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    for k in keys or data.keys():
        if k in data:
            t.add_row(k, Text(cell(data[k], 400)))
    return t
