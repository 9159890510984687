"""A JSON parser that refuses bodies nested deeper than the API stores (400, never a RecursionError)."""

from __future__ import annotations

import io
import re
from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from apps.catalog.validators import MAX_JSON_DEPTH

_NEXT = re.compile(rb'[\[\]{}"]')
_STRING_TAIL = re.compile(rb'(?:[^"\\]|\\.)*+"', re.DOTALL)


def json_depth(raw: bytes, *, stop_above: int | None = None) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings not counted.

    Linear in the body (one pass; a string is skipped with one possessive match), and it
    stops as soon as the depth passes ``stop_above``.
    """
    depth = deepest = pos = 0
    while (m := _NEXT.search(raw, pos)) is not None:
        c = m.group()
        if c == b'"':
            tail = _STRING_TAIL.match(raw, m.end())
            if tail is None:
                break  # an unterminated string: the JSON parser will say so
            pos = tail.end()
            continue
        pos = m.end()
        if c in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if stop_above is not None and deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, after a depth check: JSON nested over ``MAX_JSON_DEPTH`` levels is a 400."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        raw = stream.read() if stream is not None else b""
        if json_depth(raw, stop_above=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels.")
        try:
            return super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError as e:  # belt and braces: never a 500
            raise ParseError("JSON parse error - nested too deep.") from e
