"""The shapes commands share: ids and JSON arguments checked, a list or one object fetched and shown."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.text import Text

from hyperbench_cli.context import Ctx
from hyperbench_cli.errors import EXIT_OK, EXIT_USAGE, CliError

Row = Callable[[dict[str, Any]], list[Any]]


def int_id(raw: str, what: str) -> int:
    if not raw.isascii() or not raw.isdigit() or not 0 < int(raw) < 2**63:
        raise CliError(f"{what} must be a positive integer id (got {raw!r})", EXIT_USAGE)
    return int(raw)


def json_arg(raw: str | None, flag: str) -> dict[str, Any] | None:
    """A JSON object given inline or as ``@file.json``; anything else is a usage error."""
    if raw is None:
        return None
    if raw.startswith("@"):
        try:
            raw = Path(raw[1:]).read_text(encoding="utf-8")
        except OSError as e:
            raise CliError(f"{flag}: cannot read {raw[1:]}: {e.strerror}", EXIT_USAGE) from e
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise CliError(f"{flag} is not valid JSON: {e}", EXIT_USAGE) from e
    if not isinstance(value, dict):
        raise CliError(f"{flag} must be a JSON object", EXIT_USAGE)
    return value


def fetch_list(ctx: Ctx, path: str) -> list[dict[str, Any]]:
    """Up to ``--limit`` items of a paginated list."""
    return list(ctx.api().pages(path, ctx.args.limit))


def show_list(ctx: Ctx, title: str, columns: Iterable[str], items: list[dict[str, Any]], row: Row) -> None:
    """The items as one JSON list (--json), or a table of one row per item."""
    if ctx.json:
        ctx.emit(items)
    else:
        ctx.table(title, columns, [row(i) for i in items])


def list_resource(ctx: Ctx, path: str, title: str, columns: Iterable[str], row: Row) -> int:
    """``<group> list``: a paginated list, shown with these columns."""
    show_list(ctx, title, columns, fetch_list(ctx, path), row)
    return EXIT_OK


def show_resource(ctx: Ctx, path: Callable[[], str], title: Callable[[dict[str, Any]], str]) -> int:
    """``<group> show``: one object, as JSON or as ``field  value`` lines under its title. ``path`` is
    called once the API is there (so a missing token is reported before a bad id)."""
    api = ctx.api()
    obj = api.get(path())
    if ctx.json:
        ctx.emit(obj)
    else:
        ctx.fields(title(obj), obj)
    return EXIT_OK


def answer(ctx: Ctx, obj: Any, *lines: Callable[[Any], str]) -> int:
    """The server's answer as JSON (--json), or the lines a person reads."""
    if ctx.json:
        ctx.emit(obj)
    else:
        for line in lines:
            ctx.out.print(Text(line(obj)))
    return EXIT_OK
