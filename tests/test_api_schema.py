"""The OpenAPI schema documents every error answer and strict request bodies (apps/api/schema.py)."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

METHODS = ("get", "post", "put", "patch", "delete")


@pytest.fixture
def schema(db: None) -> dict[str, Any]:
    r = APIClient().get("/api/schema/", {"format": "json"})
    assert r.status_code == 200
    return dict(r.json())


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(p, m, op) for p, item in schema["paths"].items() for m, op in item.items() if m in METHODS]


def test_every_operation_documents_its_error_answers(schema: dict[str, Any]) -> None:
    for path, method, op in _operations(schema):
        codes = set(op["responses"])
        token = path.endswith("/auth/token/")
        assert "429" in codes, (method, path)
        assert ("401" in codes) != token, (method, path)
        if "{" in path:
            assert "404" in codes, (method, path)
        if method == "post":
            assert "400" in codes, (method, path)
            assert ("403" in codes) != token, (method, path)
        for code in codes - {"200", "201", "302"}:
            body = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
            assert body.endswith("/ValidationError" if code == "400" else "/Error"), (method, path, code)
    assert "409" in schema["paths"]["/api/v1/datasets/"]["post"]["responses"]


def test_request_bodies_refuse_unknown_fields_and_are_json(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    bodies = [(p, op["requestBody"]) for p, _, op in _operations(schema) if "requestBody" in op]
    assert len(bodies) >= 6
    for path, body in bodies:
        # JSON everywhere but the dataset upload, a multipart form (the file in `file`).
        media = "multipart/form-data" if path == "/api/v1/datasets/upload/" else "application/json"
        assert list(body["content"]) == [media], path
        ref = body["content"][media]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert components[ref]["additionalProperties"] is False, ref


def test_the_dataset_upload_is_documented_as_a_multipart_form(schema: dict[str, Any]) -> None:
    op = schema["paths"]["/api/v1/datasets/upload/"]["post"]
    form = schema["components"]["schemas"]["DatasetUploadRequest"]
    assert form["properties"]["file"]["format"] == "binary"
    assert form["required"] == ["file"]
    assert "pubtabnet-jsonl" in schema["components"]["schemas"]["FormatEnum"]["enum"]
    assert {"201", "400", "401", "403", "409", "429", "503"} <= set(op["responses"])
    assert op["responses"]["201"]["links"]["GetDataset"]["parameters"] == {"id": "$response.body#/id"}


def test_created_objects_link_to_their_operations(schema: dict[str, Any]) -> None:
    links = schema["paths"]["/api/v1/experiments/"]["post"]["responses"]["201"]["links"]
    assert links["StartRun"]["requestBody"] == {"experiment": "$response.body#/id"}
    ids = {op.get("operationId") for _, _, op in _operations(schema)}
    for path in ("/api/v1/runs/", "/api/v1/comparisons/", "/api/v1/datasets/", "/api/v1/models/"):
        for link in schema["paths"][path]["post"]["responses"]["201"]["links"].values():
            assert link["operationId"] in ids


def test_an_unknown_api_url_is_a_json_404_after_authentication(as_alice: APIClient) -> None:
    assert APIClient().get("/api/v1/nothing/here/").status_code == 401
    r = as_alice.get("/api/v1/runs/0.5/report/")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not found."}
    assert as_alice.get("/api/v1/runs").status_code == 301  # APPEND_SLASH still redirects
