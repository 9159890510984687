"""Pagination with documented bounds: ``limit`` is clamped to ``HYPERBENCH_API_MAX_PAGE_SIZE``."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request


class BoundedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset pagination with a ceiling on ``limit`` (a huge one is clamped, never sent to
    the database) and ``offset`` clamped to 2^63 - 1; an offset past the end answers an empty page.

    A ``limit`` that is not a whole number from 1, or an ``offset`` that is not one from 0, is a 400
    naming the parameter (DRF would silently use the default instead).
    """

    MAX_OFFSET = 2**63 - 1
    max_limit: int

    def __init__(self) -> None:
        # Read when the paginator is made: a view makes one per request, so a changed setting applies.
        self.max_limit = int(settings.HYPERBENCH_API_MAX_PAGE_SIZE)

    @staticmethod
    def _whole(request: Request, name: str, least: int) -> int | None:
        raw = request.query_params.get(name)
        if raw is None or raw == "":
            return None
        # ASCII digits only ("²".isdigit() is true); past 20 digits the value only matters as "huge"
        # (int() of a million digits is slow, and every value this big is clamped anyway).
        digits = raw.lstrip("0") or "0"
        value = int(digits) if re.fullmatch(r"[0-9]+", raw) and len(digits) <= 20 else 2**64
        if not re.fullmatch(r"[0-9]+", raw) or value < least:
            raise ValidationError({name: [f"Must be a whole number from {least}."]})
        return value

    def get_limit(self, request: Request) -> int | None:
        limit = self._whole(request, self.limit_query_param, 1)
        if limit is None:
            return self.default_limit
        return min(limit, self.max_limit)

    def get_offset(self, request: Request) -> int:
        offset = self._whole(request, self.offset_query_param, 0)
        return min(offset or 0, self.MAX_OFFSET)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        params = super().get_schema_operation_parameters(view)
        for p in params:
            if p.get("name") == self.limit_query_param:
                p["schema"] = {**p.get("schema", {}), "minimum": 1}
                p["description"] = f"{p.get('description', '')} At most {self.max_limit}; more is clamped."
            elif p.get("name") == self.offset_query_param:
                p["schema"] = {**p.get("schema", {}), "minimum": 0}
        return params
