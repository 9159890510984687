"""One error shape for the whole API (DRF's ``EXCEPTION_HANDLER``).

Every error answer is a JSON object: ``{"detail": "..."}`` (with ``"problems"`` for a
registration, ``"quota"`` and ``"limit"`` for a quota), or, for a 400 of field checks, the
messages of each refused field by name (``{"shards": ["..."]}``). The OpenAPI schema documents
both (``Error`` and ``ValidationError``, apps/api/schema.py).

Service errors a view lets through are mapped here: ``RegistrationConflict`` 409,
``RegistrationError`` and ``RunError`` 400, ``QuotaExceeded`` 403 or 429 (with ``Retry-After``
when a wait helps). A missing object and one the user may not see are the same 404.
"""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from apps.catalog.services import RegistrationConflict, RegistrationError
from apps.quotas.services import QuotaExceeded
from apps.runs.services import RunError


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, QuotaExceeded):
        body = {"detail": str(exc), "quota": exc.quota, "limit": exc.limit}
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return Response(body, status=exc.status, headers=headers)
    if isinstance(exc, RegistrationError):
        code = (
            status.HTTP_409_CONFLICT if isinstance(exc, RegistrationConflict) else status.HTTP_400_BAD_REQUEST
        )
        return Response({"detail": str(exc), "problems": exc.problems}, status=code)
    if isinstance(exc, RunError):
        return Response({"detail": str(exc)}, status=status.HTTP_400_BAD_REQUEST)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, list):
        # A ValidationError raised with a list (not by a serializer): still an object.
        response.data = {"non_field_errors": response.data}
    return response
