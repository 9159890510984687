"""Comparisons of runs: who may compare what, and how the host's answer lands."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from rest_framework.test import APIClient

from apps.runs.models import Comparison, Run
from apps.runs.services import comparison_record
from tests.test_leaderboard import _dataset, _run


def _spec(run: Run) -> Run:
    run.spec = {
        "dataset": {
            "name": "d",
            "version": "1",
            "task": "ocr",
            "uri": "file:///x/",
            "manifest_sha256": run.manifest_sha256,
            "sample_count": 100,
        },
        "limits": {"timeout_s": 60, "memory_mb": 512, "cpus": 1.0, "pids": 64},
        "summary": {},
    }
    run.save()
    return run


def test_two_succeeded_runs_on_one_dataset_version_are_queued_for_comparison(
    as_alice: APIClient, alice: AbstractUser
) -> None:
    ds = _dataset("invoices")
    a, b = (
        _spec(_run(alice, ds, "rapidocr", {"cer": 0.02})),
        _spec(_run(alice, ds, "tesseract", {"cer": 0.08})),
    )

    r = as_alice.post("/api/v1/comparisons/", {"runs": [b.pk, a.pk]}, format="json")

    assert r.status_code == 201, r.content
    cmp = Comparison.objects.get()
    assert cmp.run_ids == [b.pk, a.pk] and cmp.state == "queued"


def test_runs_on_different_dataset_versions_are_not_compared(
    as_alice: APIClient, alice: AbstractUser
) -> None:
    a = _spec(_run(alice, _dataset("invoices"), "rapidocr", {"cer": 0.02}))
    other = _dataset("receipts")
    Run.objects.filter(pk=a.pk).update(manifest_sha256="b" * 64)
    b = _spec(_run(alice, other, "tesseract", {"cer": 0.08}))

    r = as_alice.post("/api/v1/comparisons/", {"runs": [a.pk, b.pk]}, format="json")

    assert r.status_code == 400 and "different dataset versions" in r.json()["detail"]
    assert not Comparison.objects.exists()


def test_unfinished_runs_and_other_peoples_runs_are_refused(
    as_alice: APIClient, as_bob: APIClient, alice: AbstractUser
) -> None:
    ds = _dataset("invoices")
    a, b = (
        _spec(_run(alice, ds, "rapidocr", {"cer": 0.02})),
        _spec(_run(alice, ds, "tesseract", {"cer": 0.08})),
    )
    Run.objects.filter(pk=b.pk).update(state=Run.State.RUNNING)

    unfinished = as_alice.post("/api/v1/comparisons/", {"runs": [a.pk, b.pk]}, format="json")
    foreign = as_bob.post("/api/v1/comparisons/", {"runs": [a.pk, b.pk]}, format="json")
    single = as_alice.post("/api/v1/comparisons/", {"runs": [a.pk]}, format="json")

    assert unfinished.status_code == 400 and "Only succeeded runs" in unfinished.json()["detail"]
    assert foreign.status_code == 400 and "Not found" in str(foreign.json())
    assert single.status_code == 400
    assert not Comparison.objects.exists()


def test_the_hosts_answer_finishes_a_comparison_once(alice: AbstractUser) -> None:
    ds = _dataset("invoices")
    cmp = Comparison.objects.create(run_ids=[1, 2], dataset=ds)

    comparison_record(
        result={"comparison_id": cmp.pk, "ok": True, "host": "h1", "report_uri": "file:///r.html"}
    )
    comparison_record(result={"comparison_id": cmp.pk, "ok": False, "host": "h2", "reason": "late duplicate"})

    cmp.refresh_from_db()
    assert cmp.state == "succeeded" and cmp.report_uri == "file:///r.html" and cmp.error_reason == ""
