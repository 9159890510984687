"""The REST API as its users meet it: registration errors, permissions, strict input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.runs.models import Experiment, Run
from tests.conftest import load_script

PINNED = "sha256:" + "a" * 64  # a model is registered with the image id it is pinned to


@pytest.fixture
def dataset_root(settings: Any, tmp_path: Path) -> Path:
    settings.HYPERBENCH_DATASET_ROOTS = [tmp_path.resolve()]
    return tmp_path


def _dataset(root: Path, name: str = "docs", count: int = 3) -> Path:
    out = root / name / "1"
    load_script("make_sample_dataset").write_dataset(out, count, 5)
    return out


def _rewrite_manifest(ds: Path, lines: list[str]) -> None:
    (ds / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))


def test_the_api_refuses_anonymous_requests(db: None) -> None:
    assert APIClient().get("/api/v1/runs/").status_code == 401


def test_a_dataset_registers_with_its_hash_and_counts(as_alice: APIClient, dataset_root: Path) -> None:
    ds = _dataset(dataset_root)
    r = as_alice.post("/api/v1/datasets/", {"uri": ds.as_uri()}, format="json")
    assert r.status_code == 201, r.content
    import hashlib

    assert r.json()["manifest_sha256"] == hashlib.sha256((ds / "manifest.jsonl").read_bytes()).hexdigest()
    assert r.json()["sample_count"] == 3
    assert r.json()["task"] == "ocr"


def test_a_manifest_line_that_is_not_json_is_refused_with_its_line_number(
    as_alice: APIClient, dataset_root: Path
) -> None:
    ds = _dataset(dataset_root)
    lines = (ds / "manifest.jsonl").read_text().splitlines()
    lines[1] = '{"id": "broken", '
    _rewrite_manifest(ds, lines)

    r = as_alice.post("/api/v1/datasets/", {"uri": ds.as_uri()}, format="json")

    assert r.status_code == 400
    assert any("line 2" in p for p in r.json()["problems"]), r.json()
    assert Dataset.objects.count() == 0


def test_a_manifest_naming_a_missing_image_is_refused_with_its_line_number(
    as_alice: APIClient, dataset_root: Path
) -> None:
    ds = _dataset(dataset_root)
    lines = (ds / "manifest.jsonl").read_text().splitlines()
    row = json.loads(lines[2])
    (ds / row["image"]).unlink()

    r = as_alice.post("/api/v1/datasets/", {"uri": ds.as_uri()}, format="json")

    assert r.status_code == 400
    problem = " ".join(r.json()["problems"])
    assert "line 3" in problem
    assert row["image"] in problem
    assert Dataset.objects.count() == 0


def test_a_dataset_outside_the_configured_roots_is_refused(as_alice: APIClient, dataset_root: Path) -> None:
    r = as_alice.post("/api/v1/datasets/", {"uri": "file:///etc/"}, format="json")
    assert r.status_code == 400
    assert "outside the configured dataset roots" in r.json()["detail"]
    r = as_alice.post("/api/v1/datasets/", {"uri": "http://169.254.169.254/latest/"}, format="json")
    assert r.status_code == 400


def test_only_staff_register_models(as_alice: APIClient, as_staff: APIClient) -> None:
    body = {"name": "rapidocr", "image": "hyperbench/ocr-rapidocr:latest", "digest": PINNED}
    assert as_alice.post("/api/v1/models/", body, format="json").status_code == 403
    assert as_staff.post("/api/v1/models/", body, format="json").status_code == 201
    assert as_alice.get("/api/v1/models/").json()["results"][0]["name"] == "rapidocr"


def test_an_experiment_naming_an_unknown_model_is_refused(as_alice: APIClient, dataset_root: Path) -> None:
    ds = as_alice.post("/api/v1/datasets/", {"uri": _dataset(dataset_root).as_uri()}, format="json").json()
    r = as_alice.post(
        "/api/v1/experiments/", {"name": "x", "model": "gpt-99", "dataset": ds["id"]}, format="json"
    )
    assert r.status_code == 400
    assert "gpt-99" in json.dumps(r.json())


@pytest.mark.parametrize("field", ["image", "mounts", "devices", "privileged", "network_mode", "environment"])
def test_unknown_fields_are_rejected_not_ignored(
    as_alice: APIClient, as_staff: APIClient, dataset_root: Path, field: str
) -> None:
    model = {"name": "m", "image": "hyperbench/testkit:latest", "digest": PINNED}
    as_staff.post("/api/v1/models/", model, format="json")
    ds = as_alice.post("/api/v1/datasets/", {"uri": _dataset(dataset_root).as_uri()}, format="json").json()
    body = {"name": "x", "model": "m", "dataset": ds["id"], field: "/var/run/docker.sock"}

    r = as_alice.post("/api/v1/experiments/", body, format="json")

    assert r.status_code == 400
    assert r.json() == {field: ["Unknown field."]}
    assert Experiment.objects.count() == 0


def test_a_teammate_cannot_see_or_start_the_owners_runs(
    as_alice: APIClient, as_bob: APIClient, as_staff: APIClient, dataset_root: Path
) -> None:
    model = {"name": "m", "image": "hyperbench/testkit:latest", "digest": PINNED}
    as_staff.post("/api/v1/models/", model, format="json")
    ds = as_alice.post("/api/v1/datasets/", {"uri": _dataset(dataset_root).as_uri()}, format="json").json()
    exp = as_alice.post(
        "/api/v1/experiments/", {"name": "x", "model": "m", "dataset": ds["id"]}, format="json"
    )

    assert as_bob.get(f"/api/v1/experiments/{exp.json()['id']}/").status_code == 404
    r = as_bob.post("/api/v1/runs/", {"experiment": exp.json()["id"]}, format="json")
    assert r.status_code == 400
    assert Run.objects.count() == 0
    assert ModelImage.objects.count() == 1


def test_the_run_list_costs_the_same_queries_for_two_runs_as_for_twelve(
    alice: Any, as_alice: APIClient
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from tests.test_leaderboard import _dataset as board_dataset
    from tests.test_leaderboard import _run as board_run

    dataset = board_dataset("many")

    def count() -> int:
        with CaptureQueriesContext(connection) as ctx:
            r = as_alice.get("/api/v1/runs/")
        assert r.status_code == 200
        return len(ctx.captured_queries)

    for i in range(2):
        board_run(alice, dataset, f"m{i}", {"cer": 0.1})
    few = count()
    for i in range(2, 12):
        board_run(alice, dataset, f"m{i}", {"cer": 0.1})
    assert count() == few
    first = Run.objects.first()
    assert first is not None
    one = as_alice.get(f"/api/v1/runs/{first.pk}/").json()
    assert "events" in one, "a run's own page still has its events"
    assert "sync" in one, "a run's own page still has its events"
