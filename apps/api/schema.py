"""The OpenAPI schema says what the API answers, errors included.

* :class:`AutoSchema` (``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]``) adds every 4xx answer an
  operation can give to its responses: 400 (the field-errors shape, :data:`VALIDATION_ERROR`)
  where there is a body or a query parameter to refuse, 401 and 429 everywhere, 403 on every
  write (permissions, CSRF for session logins, quotas), 404 wherever the path names an object,
  409 on dataset registration, upload, run retry and rescore, the ``503`` of the artifact links and of
  uploads. It documents JSON bodies only (the form parsers stay for the browsable API), except the
  dataset upload's multipart form.
* :func:`postprocess` (``SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]``) declares the error
  components, sets ``additionalProperties: false`` on every request body (the serializers
  refuse unknown fields, ``serializers.StrictMixin``), and adds the OpenAPI links that chain a
  created object to the operations on it (schemathesis's stateful phase follows them).
"""

from __future__ import annotations

from typing import Any

from drf_spectacular import openapi
from rest_framework.parsers import MultiPartParser

ERROR = "Error"
VALIDATION_ERROR = "ValidationError"

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Every error answer other than a field check: what went wrong and what to do.",
    "properties": {
        "detail": {"type": "string"},
        "problems": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Registration: each problem found, one per line",
        },
        "quota": {"type": "string", "description": "429/403 of a quota: which quota"},
        "limit": {"type": "integer", "description": "429/403 of a quota: its value for this user"},
    },
    "required": ["detail"],
}

_FIELD_MESSAGES: dict[str, Any] = {
    "anyOf": [
        {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
        {"type": "object", "description": "Errors of a nested field or of list items, by index"},
    ]
}

_VALIDATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "A 400: either the messages of each refused field, by field name "
        '({"shards": ["Ensure this value is less than or equal to 64."]}; an unknown field: '
        '"Unknown field."; checks across fields: "non_field_errors"), or a "detail" '
        '(a body that is not JSON, or a service refusal), with "problems" for registrations.'
    ),
    "properties": {"detail": {"type": "string"}, "problems": {"type": "array", "items": {"type": "string"}}},
    "additionalProperties": _FIELD_MESSAGES,
}

_DESCRIPTIONS = {
    "400": "The request was refused: see the field messages or the detail",
    "401": "No valid token (send Authorization: Token <key>)",
    "403": "Not allowed: staff only, a CSRF check of a session login, or a quota",
    "404": "No such object, or not one this user may see (the same answer)",
    "409": "A conflict: a dataset's name and version exist with another manifest (or the source cannot "
    "join them), a retry of a run that is not failed or cancelled, or a rescore of a run that has not "
    "succeeded or is being re-scored",
    "429": "Throttled (Retry-After says when to try again), or a quota (the detail says which)",
    "503": "The artifact store cannot be reached, or dataset uploads are not configured",
}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(code: str) -> dict[str, Any]:
    schema = _ref(VALIDATION_ERROR if code == "400" else ERROR)
    return {"description": _DESCRIPTIONS[code], "content": {"application/json": {"schema": schema}}}


class AutoSchema(openapi.AutoSchema):
    def map_parsers(self) -> list[str]:
        parsers = getattr(self.view, "parser_classes", ())
        if parsers and all(issubclass(p, MultiPartParser) for p in parsers):
            return ["multipart/form-data"]  # the dataset upload: a file
        return ["application/json"]

    def _error_codes(self) -> list[str]:
        path, method = self.path, self.method.upper()
        anonymous = not getattr(self.view, "permission_classes", None)  # the token endpoint
        codes = []
        has_query = any(p.get("in") == "query" for p in self._get_parameters())
        if method in ("POST", "PUT", "PATCH") or has_query:
            codes.append("400")
        if not anonymous:
            codes.append("401")
            if method not in ("GET", "HEAD", "OPTIONS"):
                codes.append("403")
        if "{" in path:
            codes.append("404")
        if path.endswith(("/datasets/", "/datasets/upload/", "/retry/", "/rescore/")) and method == "POST":
            codes.append("409")
        codes.append("429")
        if "/artifacts/" in path or path.endswith("/datasets/upload/"):
            codes.append("503")
        return codes

    def _get_response_bodies(self, direction: Any = "response") -> Any:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._error_codes():
            responses.setdefault(code, _error(code))
        return responses


# --- the postprocessing hook -----------------------------------------------------------------

#: (path, method of the creating operation) -> links from its 201 to the operations on the object.
_LINKS: dict[tuple[str, str], dict[str, tuple[str, str, dict[str, Any]]]] = {
    ("/api/v1/datasets/", "post"): {
        "GetDataset": ("/api/v1/datasets/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
    },
    ("/api/v1/datasets/upload/", "post"): {
        "GetDataset": ("/api/v1/datasets/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
    },
    ("/api/v1/models/", "post"): {
        "GetModel": ("/api/v1/models/{name}/", "get", {"parameters": {"name": "$response.body#/name"}}),
    },
    ("/api/v1/experiments/", "post"): {
        "GetExperiment": ("/api/v1/experiments/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
        "StartRun": ("/api/v1/runs/", "post", {"requestBody": {"experiment": "$response.body#/id"}}),
    },
    ("/api/v1/runs/", "post"): {
        "GetRun": ("/api/v1/runs/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
        "GetRunArtifacts": (
            "/api/v1/runs/{id}/artifacts/",
            "get",
            {"parameters": {"id": "$response.body#/id"}},
        ),
        "GetRunReport": ("/api/v1/runs/{id}/report/", "get", {"parameters": {"id": "$response.body#/id"}}),
        "CancelRun": ("/api/v1/runs/{id}/cancel/", "post", {"parameters": {"id": "$response.body#/id"}}),
    },
    ("/api/v1/runs/{id}/retry/", "post"): {
        "GetRetriedRun": ("/api/v1/runs/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
    },
    ("/api/v1/runs/{id}/rescore/", "post"): {
        "GetRescoredRun": ("/api/v1/runs/{id}/", "get", {"parameters": {"id": "$response.body#/run"}}),
    },
    ("/api/v1/comparisons/", "post"): {
        "GetComparison": ("/api/v1/comparisons/{id}/", "get", {"parameters": {"id": "$response.body#/id"}}),
        "GetComparisonReport": (
            "/api/v1/comparisons/{id}/report/",
            "get",
            {"parameters": {"id": "$response.body#/id"}},
        ),
    },
}


def _strict(schema: dict[str, Any]) -> None:
    if schema.get("type") == "object" and "properties" in schema:
        schema["additionalProperties"] = False


def postprocess(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR] = _ERROR_SCHEMA
    schemas[VALIDATION_ERROR] = _VALIDATION_SCHEMA
    paths = result.get("paths", {})
    # Request bodies: the serializers refuse unknown fields, so the schema says so.
    for item in paths.values():
        for op in item.values():
            if not isinstance(op, dict):
                continue
            for media in op.get("requestBody", {}).get("content", {}).values():
                schema = media.get("schema", {})
                ref = schema.get("$ref", "")
                _strict(schemas.get(ref.rsplit("/", 1)[-1], {}) if ref else schema)
    for (path, method), links in _LINKS.items():
        op = paths.get(path, {}).get(method)
        if not op or "201" not in op.get("responses", {}):
            continue
        out = {}
        for name, (target, target_method, how) in links.items():
            target_op = paths.get(target, {}).get(target_method)
            if target_op and "operationId" in target_op:
                out[name] = {"operationId": target_op["operationId"], **how}
        if out:
            op["responses"]["201"]["links"] = out
    return result
