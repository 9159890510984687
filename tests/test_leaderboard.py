"""The leaderboard and the per-sample browser, as a team lead reads them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AbstractUser
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.runs.models import Experiment, Run


def _dataset(name: str, task: str = "ocr", root: Path | None = None) -> Dataset:
    return Dataset.objects.create(
        name=name,
        version="1",
        task=task,
        source_uri=(root.as_uri() + "/") if root else "file:///nowhere/",
        manifest_sha256="a" * 64,
        sample_count=100,
    )


def _run(
    owner: AbstractUser,
    dataset: Dataset,
    model: str,
    metrics: dict[str, float],
    *,
    version: str = "1.0",
    age_min: int = 0,
    inference_s: float = 50.0,
) -> Run:
    m, _ = ModelImage.objects.get_or_create(name=model, defaults={"image": f"hyperbench/{model}:1"})
    exp, _ = Experiment.objects.get_or_create(name=f"{model} default", model=m, dataset=dataset, owner=owner)
    return Run.objects.create(
        experiment=exp,
        spec={},
        state=Run.State.SUCCEEDED,
        manifest_sha256=dataset.manifest_sha256,
        progress_total=100,
        progress_done=100,
        metric_version=version,
        inference_s=inference_s,
        finished_at=timezone.now() - timedelta(minutes=age_min),
        metrics={
            "metric_version": version,
            "errors": 0,
            "n": 100,
            "metrics": {k: {"value": v, "ci95": [v - 0.01, v + 0.01]} for k, v in metrics.items()},
        },
    )


def test_models_are_ranked_by_cer_with_their_latest_run_and_ci(
    as_alice: APIClient, alice: AbstractUser
) -> None:
    ds = _dataset("invoices")
    _run(alice, ds, "tesseract", {"cer": 0.08, "wer": 0.2})
    _run(alice, ds, "rapidocr", {"cer": 0.30, "wer": 0.5}, age_min=60)  # superseded by the next run
    _run(alice, ds, "rapidocr", {"cer": 0.02, "wer": 0.05}, inference_s=25.0)
    _run(alice, ds, "pending", {"cer": 0.01})
    Run.objects.filter(experiment__model__name="pending").update(state=Run.State.FAILED)

    board = as_alice.get("/api/v1/leaderboard/", {"dataset": ds.pk}).json()["results"][0]

    assert board["metric"] == "cer" and board["lower_is_better"] is True
    assert [(e["rank"], e["model"], e["value"]) for e in board["entries"]] == [
        (1, "rapidocr", 0.02),
        (2, "tesseract", 0.08),
    ]
    assert board["entries"][0]["ci95"] == [0.01, 0.03]
    assert board["entries"][0]["samples_per_s"] == 4.0


def test_runs_scored_by_another_metric_version_are_listed_but_never_ranked(
    as_alice: APIClient, alice: AbstractUser
) -> None:
    ds = _dataset("forms")
    _run(alice, ds, "old-model", {"cer": 0.001}, version="0.9")
    _run(alice, ds, "new-model", {"cer": 0.05}, version="1.0")

    board = as_alice.get("/api/v1/leaderboard/").json()["results"][0]

    assert board["metric_version"] == "1.0"
    assert [(e["rank"], e["model"]) for e in board["entries"]] == [(1, "new-model"), (None, "old-model")]


def test_vqa_boards_rank_by_anls_higher_first_and_filter_by_task(
    as_alice: APIClient, alice: AbstractUser
) -> None:
    ocr, vqa = _dataset("receipts"), _dataset("docvqa-mini", task="vqa")
    _run(alice, ocr, "rapidocr", {"cer": 0.1})
    _run(alice, vqa, "vlm-a", {"anls": 0.61})
    _run(alice, vqa, "vlm-b", {"anls": 0.74})

    boards = as_alice.get("/api/v1/leaderboard/", {"task": "vqa"}).json()["results"]

    assert [b["dataset"]["name"] for b in boards] == ["docvqa-mini"]
    assert [e["model"] for e in boards[0]["entries"]] == ["vlm-b", "vlm-a"]


@pytest.fixture
def run_with_samples(settings: Any, tmp_path: Path, alice: AbstractUser) -> Run:
    settings.HYPERBENCH_ARTIFACTS_URI = tmp_path.as_uri() + "/"
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "images" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\nsecret")
    rows = [
        {
            "id": "a",
            "image": "images/a.png",
            "reference": "hello",
            "prediction": "hallo",
            "cer": 0.2,
            "error": None,
        },
        {
            "id": "b",
            "image": "images/b.png",
            "reference": "world",
            "prediction": "",
            "cer": 1.0,
            "error": "unreadable image",
        },
        {
            "id": "c",
            "image": "images/c.png",
            "reference": "ok",
            "prediction": "ok",
            "cer": 0.0,
            "error": None,
        },
    ]
    per_sample = tmp_path / "per_sample.jsonl"
    per_sample.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = _run(alice, _dataset("tiny", root=data), "rapidocr", {"cer": 0.4})
    run.per_sample_uri = per_sample.as_uri()
    run.save()
    return run


def test_staff_browse_a_runs_samples_by_score_range_and_errors(
    staff: AbstractUser, run_with_samples: Run
) -> None:
    web = Client()
    web.force_login(staff)
    url = f"/admin/runs/run/{run_with_samples.pk}/samples/"

    everything = web.get(url).content.decode()
    mid = web.get(url, {"min": "0.1", "max": "0.5"}).content.decode()
    errors = web.get(url, {"errors": "1"}).content.decode()

    assert all(f"<td>{i}</td>" in everything for i in "abc")
    assert "<td>a</td>" in mid and "<td>b</td>" not in mid and "<td>c</td>" not in mid
    assert "<td>b</td>" in errors and "unreadable image" in errors and "<td>a</td>" not in errors
    assert "hallo" in everything


def test_sample_images_are_served_from_the_dataset_only(staff: AbstractUser, run_with_samples: Run) -> None:
    web = Client()
    web.force_login(staff)
    url = f"/admin/runs/run/{run_with_samples.pk}/samples/image/"

    assert web.get(url, {"path": "images/a.png"}).status_code == 200
    assert web.get(url, {"path": "../secret.png"}).status_code == 404
    assert web.get(url, {"path": "/etc/passwd"}).status_code == 404


def test_the_admin_leaderboard_page_lists_the_ranked_models(staff: AbstractUser, alice: AbstractUser) -> None:
    ds = _dataset("letters")
    _run(alice, ds, "rapidocr", {"cer": 0.02})
    web = Client()
    web.force_login(staff)

    page = web.get("/admin/runs/run/leaderboard/").content.decode()

    assert "letters@1" in page and "rapidocr" in page and "0.0200" in page
