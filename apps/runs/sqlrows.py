"""A batch's rows as a table in one SQL parameter (a JSON array of arrays), for set-based updates.

``UPDATE ... FROM (VALUES (%s, ...), ...)`` takes one placeholder per value: ten
thousand for a burst of a thousand shard ends, each parsed and bound on its own.
One JSON parameter, unpacked by the database (``jsonb_array_elements`` on
PostgreSQL, ``json_each`` on SQLite), is one placeholder whatever the batch's size.
The table's columns are named ``column1``, ``column2``, ... as a ``VALUES`` list's
are, and cast to the given types.
"""

from __future__ import annotations

import json
from typing import Any

from django.db import connection

_SQLITE = {"bigint": "INTEGER", "integer": "INTEGER", "double precision": "REAL", "text": "TEXT"}


def rows_table(rows: list[tuple[Any, ...]], types: tuple[str, ...]) -> tuple[str, list[Any]]:
    """``(subquery, [param])``: the rows as a derived table with columns ``column1``..``columnN``."""
    if connection.vendor == "postgresql":
        cols = ", ".join(f"CAST(e->>{i} AS {t}) AS column{i + 1}" for i, t in enumerate(types))
        sql = f"(SELECT {cols} FROM jsonb_array_elements(CAST(%s AS jsonb)) AS e)"  # noqa: S608 - types only
    else:
        cols = ", ".join(
            f"CAST(json_extract(value, '$[{i}]') AS {_SQLITE[t]}) AS column{i + 1}"
            for i, t in enumerate(types)
        )
        sql = f"(SELECT {cols} FROM json_each(%s))"  # noqa: S608 - column casts only
    return sql, [json.dumps(rows)]
