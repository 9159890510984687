"""The leaderboard and the per-sample browser, as a team lead reads them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
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
    owner: User,
    dataset: Dataset,
    model: str,
    metrics: dict[str, float],
    *,
    version: str = "1.0",
    age_min: int = 0,
    inference_s: float = 50.0,
    gpu_seconds: float = 0.0,
    primary: str | None = None,
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
        gpu_seconds=gpu_seconds,
        finished_at=timezone.now() - timedelta(minutes=age_min),
        metrics={
            "metric_version": version,
            "errors": 0,
            "n": 100,
            "metrics": {k: {"value": v, "ci95": [v - 0.01, v + 0.01]} for k, v in metrics.items()},
            **({"primary_metric": primary} if primary else {}),
        },
    )


def test_models_are_ranked_by_cer_with_their_latest_run_and_ci(as_alice: APIClient, alice: User) -> None:
    ds = _dataset("invoices")
    _run(alice, ds, "tesseract", {"cer": 0.08, "wer": 0.2})
    _run(alice, ds, "rapidocr", {"cer": 0.30, "wer": 0.5}, age_min=60)  # superseded by the next run
    _run(alice, ds, "rapidocr", {"cer": 0.02, "wer": 0.05}, inference_s=25.0)
    _run(alice, ds, "pending", {"cer": 0.01})
    Run.objects.filter(experiment__model__name="pending").update(state=Run.State.FAILED)

    board = as_alice.get("/api/v1/leaderboard/", {"dataset": ds.pk}).json()["results"][0]

    assert board["metric"] == "cer"
    assert board["lower_is_better"] is True
    assert [(e["rank"], e["model"], e["value"]) for e in board["entries"]] == [
        (1, "rapidocr", 0.02),
        (2, "tesseract", 0.08),
    ]
    assert board["entries"][0]["ci95"] == [0.01, 0.03]
    assert board["entries"][0]["samples_per_s"] == 4.0


def test_runs_scored_by_another_metric_version_are_listed_but_never_ranked(
    as_alice: APIClient, alice: User
) -> None:
    ds = _dataset("forms")
    _run(alice, ds, "old-model", {"cer": 0.001}, version="0.9")
    _run(alice, ds, "new-model", {"cer": 0.05}, version="1.0")

    board = as_alice.get("/api/v1/leaderboard/").json()["results"][0]

    assert board["metric_version"] == "1.0"
    assert [(e["rank"], e["model"]) for e in board["entries"]] == [(1, "new-model"), (None, "old-model")]


def test_vqa_boards_rank_by_anls_higher_first_and_filter_by_task(as_alice: APIClient, alice: User) -> None:
    ocr, vqa = _dataset("receipts"), _dataset("docvqa-mini", task="vqa")
    _run(alice, ocr, "rapidocr", {"cer": 0.1})
    _run(alice, vqa, "vlm-a", {"anls": 0.61})
    _run(alice, vqa, "vlm-b", {"anls": 0.74})

    boards = as_alice.get("/api/v1/leaderboard/", {"task": "vqa"}).json()["results"]

    assert [b["dataset"]["name"] for b in boards] == ["docvqa-mini"]
    assert [e["model"] for e in boards[0]["entries"]] == ["vlm-b", "vlm-a"]


@pytest.fixture
def run_with_samples(settings: Any, tmp_path: Path, alice: User) -> Run:
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


def test_staff_browse_a_runs_samples_by_score_range_and_errors(staff: User, run_with_samples: Run) -> None:
    web = Client()
    web.force_login(staff)
    url = f"/admin/runs/run/{run_with_samples.pk}/samples/"

    everything = web.get(url).content.decode()
    mid = web.get(url, {"min": "0.1", "max": "0.5"}).content.decode()
    errors = web.get(url, {"errors": "1"}).content.decode()

    assert all(f"<td>{i}</td>" in everything for i in "abc")
    assert "<td>a</td>" in mid
    assert "<td>b</td>" not in mid
    assert "<td>c</td>" not in mid
    assert "<td>b</td>" in errors
    assert "unreadable image" in errors
    assert "<td>a</td>" not in errors
    assert "hallo" in everything


def test_sample_images_are_served_from_the_dataset_only(staff: User, run_with_samples: Run) -> None:
    web = Client()
    web.force_login(staff)
    url = f"/admin/runs/run/{run_with_samples.pk}/samples/image/"

    assert web.get(url, {"path": "images/a.png"}).status_code == 200
    assert web.get(url, {"path": "../secret.png"}).status_code == 404
    assert web.get(url, {"path": "/etc/passwd"}).status_code == 404


def test_the_admin_leaderboard_page_lists_the_ranked_models(staff: User, alice: User) -> None:
    ds = _dataset("letters")
    _run(alice, ds, "rapidocr", {"cer": 0.02})
    web = Client()
    web.force_login(staff)

    page = web.get("/admin/runs/run/leaderboard/").content.decode()

    assert "letters@1" in page
    assert "rapidocr" in page
    assert "0.0200" in page


def test_each_entry_carries_its_gpu_seconds_and_throughput(as_alice: APIClient, alice: User) -> None:
    ds = _dataset("scans")
    _run(alice, ds, "vlm-gpu", {"cer": 0.03}, inference_s=40.0, gpu_seconds=80.456)  # 2 GPUs x 40 s
    _run(alice, ds, "rapidocr", {"cer": 0.05}, inference_s=20.0)

    entries = as_alice.get("/api/v1/leaderboard/", {"dataset": ds.pk}).json()["results"][0]["entries"]

    assert [(e["model"], e["gpu_seconds"], e["samples_per_s"]) for e in entries] == [
        ("vlm-gpu", 80.46, 2.5),  # rounded to 2 places; 100 samples / 40 s
        ("rapidocr", 0.0, 5.0),  # a CPU model holds no GPU
    ]


def test_metric_ranks_by_another_metric_in_its_own_direction(as_alice: APIClient, alice: User) -> None:
    ds = _dataset("pages")
    # by corpus CER a < b < c; by the per-sample mean the order is c < a < b
    _run(alice, ds, "a", {"cer": 0.02, "cer_mean": 0.30, "wer_mean": 0.5, "ned": 0.2})
    _run(alice, ds, "b", {"cer": 0.04, "cer_mean": 0.40, "wer_mean": 0.1, "ned": 0.3})
    _run(alice, ds, "c", {"cer": 0.06, "cer_mean": 0.10, "wer_mean": 0.9, "ned": 0.1})

    def order(metric: str | None) -> tuple[str, bool, list[str]]:
        params: dict[str, int | str] = {"dataset": ds.pk, **({"metric": metric} if metric else {})}
        board = as_alice.get("/api/v1/leaderboard/", params).json()["results"][0]
        return board["metric"], board["lower_is_better"], [e["model"] for e in board["entries"]]

    assert order(None) == ("cer", True, ["a", "b", "c"])
    assert order("cer_mean") == ("cer_mean", True, ["c", "a", "b"])  # lower first, not higher
    assert order("wer_mean") == ("wer_mean", True, ["b", "a", "c"])
    assert order("ned") == ("ned", True, ["c", "a", "b"])


def test_metric_of_a_vqa_task_ranks_higher_first_and_lists_only_vqa_boards(
    as_alice: APIClient, alice: User
) -> None:
    ocr, vqa = _dataset("forms"), _dataset("chartqa-mini", task="vqa")
    _run(alice, ocr, "rapidocr", {"cer": 0.1})
    _run(alice, vqa, "vlm-a", {"anls": 0.80, "relaxed_accuracy": 0.40})
    _run(alice, vqa, "vlm-b", {"anls": 0.70, "relaxed_accuracy": 0.60})
    _run(alice, vqa, "vlm-c", {"anls": 0.90})  # scored without relaxed accuracy: listed, not ranked

    boards = as_alice.get("/api/v1/leaderboard/", {"metric": "relaxed_accuracy"}).json()["results"]

    assert [b["dataset"]["name"] for b in boards] == ["chartqa-mini"]
    assert boards[0]["lower_is_better"] is False
    assert [(e["rank"], e["model"]) for e in boards[0]["entries"]] == [
        (1, "vlm-b"),
        (2, "vlm-a"),
        (None, "vlm-c"),
    ]


# (task, its primary metric, every metric with the order a < b < c gives it, lower better?)
DOC_BOARDS = [
    ("table", "teds", {"teds": (0.9, 0.7, 0.5), "teds_struct": (0.6, 0.95, 0.8)}),
    ("kie", "field_f1", {"field_f1": (0.8, 0.6, 0.4), "nted_accuracy": (0.5, 0.9, 0.7)}),
    (
        "page",
        "page_ned",
        {
            "page_ned": (0.1, 0.2, 0.3),
            "table_teds": (0.5, 0.9, 0.7),
            "table_teds_struct": (0.9, 0.5, 0.7),
            "tables_found": (0.2, 0.4, 0.9),
        },
    ),
]


@pytest.mark.parametrize(("task", "primary", "values"), DOC_BOARDS, ids=[b[0] for b in DOC_BOARDS])
def test_the_document_tasks_rank_by_their_primary_metric_and_each_metric_in_its_direction(
    as_alice: APIClient, alice: User, task: str, primary: str, values: dict[str, tuple[float, float, float]]
) -> None:
    ds = _dataset(f"{task}-set", task=task)
    for i, model in enumerate("abc"):
        _run(alice, ds, model, {name: v[i] for name, v in values.items()})

    def order(metric: str | None) -> tuple[str, bool, list[str]]:
        params: dict[str, int | str] = {"dataset": ds.pk, **({"metric": metric} if metric else {})}
        board = as_alice.get("/api/v1/leaderboard/", params).json()["results"][0]
        return board["metric"], board["lower_is_better"], [e["model"] for e in board["entries"]]

    assert order(None)[0] == primary  # no primary_metric recorded: the task's first metric
    for name, v in values.items():
        lower = name == "page_ned"  # the only lower-is-better metric of the three tasks
        expected = [m for _, m in sorted(zip(v, "abc", strict=True), reverse=not lower)]
        assert order(name) == (name, lower, expected)


def test_a_board_ranks_by_the_primary_metric_the_dataset_chose(as_alice: APIClient, alice: User) -> None:
    vqa = _dataset("charts", task="vqa")  # its dataset.json said "metrics": ["relaxed_accuracy", "anls"]
    _run(alice, vqa, "vlm-a", {"relaxed_accuracy": 0.4, "anls": 0.9}, primary="relaxed_accuracy")
    _run(alice, vqa, "vlm-b", {"relaxed_accuracy": 0.6, "anls": 0.5}, primary="relaxed_accuracy")

    board = as_alice.get("/api/v1/leaderboard/").json()["results"][0]

    assert board["metric"] == "relaxed_accuracy"
    assert [e["model"] for e in board["entries"]] == [
        "vlm-b",
        "vlm-a",
    ]


@pytest.mark.parametrize(
    ("params", "field", "says"),
    [
        ({"metric": "cer_meen"}, "metric", "Unknown metric 'cer_meen'"),
        ({"metric": "anls", "task": "ocr"}, "metric", "'anls' is not a ocr metric"),
        ({"task": "pdf"}, "task", "Unknown task 'pdf'"),
        ({"dataset": "first"}, "dataset", "Must be an integer id"),
        ({"metirc": "cer"}, "unknown_parameters", "Not a leaderboard parameter: metirc"),
        ({"dataset_id": "1", "sort": "cer"}, "unknown_parameters", "dataset_id, sort"),
    ],
)
def test_a_bad_leaderboard_query_is_refused_with_what_to_fix(
    as_alice: APIClient, alice: User, params: dict[str, str], field: str, says: str
) -> None:
    _run(alice, _dataset("invoices"), "rapidocr", {"cer": 0.02})

    r = as_alice.get("/api/v1/leaderboard/", params)

    assert r.status_code == 400, r.content
    assert says in " ".join(r.json()[field]), r.json()


def test_the_admin_leaderboard_filters_by_dataset_task_and_metric(staff: User, alice: User) -> None:
    letters, receipts = _dataset("letters"), _dataset("receipts")
    docvqa = _dataset("docvqa-mini", task="vqa")
    _run(alice, letters, "rapidocr", {"cer": 0.02, "cer_mean": 0.30}, gpu_seconds=0.0)
    _run(alice, letters, "tesseract", {"cer": 0.08, "cer_mean": 0.10})
    _run(alice, receipts, "tesseract", {"cer": 0.11})
    _run(alice, docvqa, "vlm", {"anls": 0.77}, gpu_seconds=12.34)
    web = Client()
    web.force_login(staff)
    url = "/admin/runs/run/leaderboard/"

    def boards(params: dict[str, str]) -> str:
        r = web.get(url, params)
        assert r.status_code == 200
        return str(r.content.decode())

    everything = boards({})
    one = boards({"dataset": str(receipts.pk)})
    vqa = boards({"task": "vqa"})
    by_mean = boards({"dataset": str(letters.pk), "metric": "cer_mean"})
    wrong = boards({"task": "vqa", "metric": "cer"})

    assert all(f"<h2>{d}@1" in everything for d in ("letters", "receipts", "docvqa-mini"))
    assert "<h2>receipts@1" in one
    assert "<h2>letters@1" not in one
    assert "<h2>docvqa-mini@1" not in one
    assert "<h2>docvqa-mini@1" in vqa
    assert "<h2>letters@1" not in vqa
    assert "<h2>receipts@1" not in vqa
    assert "<td>12.3</td>" in vqa  # GPU-seconds of the VLM
    assert "Ranked by <b>cer_mean</b> (lower is better)" in by_mean
    assert by_mean.index("<td>tesseract</td>") < by_mean.index("<td>rapidocr</td>")  # 0.10 before 0.30
    assert '<option value="cer_mean" selected>' in by_mean
    assert "is no metric of the chosen task" in wrong
    assert "Ranked by <b>anls</b>" in wrong
