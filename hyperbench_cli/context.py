"""What a command is given: its parsed arguments, the API (made on first use) and where it prints."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from rich.console import Console

from hyperbench_cli import output
from hyperbench_cli.client import Api
from hyperbench_cli.config import resolve
from hyperbench_cli.errors import EXIT_AUTH, CliError


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json: bool = bool(getattr(args, "json", False))
        self.out = Console(highlight=False, soft_wrap=False)
        self._api: Api | None = None

    def api(self, *, auth: bool = True) -> Api:
        if self._api is None:
            target = resolve(getattr(self.args, "url", None), getattr(self.args, "token", None))
            if auth and not target.token:
                raise CliError(
                    f"not logged in to {target.url}: run `hyperbench login`, "
                    "or give --token / HYPERBENCH_TOKEN",
                    EXIT_AUTH,
                )
            self._api = Api(target.url, target.token)
        return self._api

    def emit(self, data: Any) -> None:
        """One JSON document on one line (with --json)."""
        sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def table(self, title: str | None, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
        self.out.print(output.table(title, columns, rows))

    def fields(self, title: str, data: dict[str, Any], keys: Iterable[str] | None = None) -> None:
        self.out.print(output.fields(title, data, keys))
