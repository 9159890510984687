"""Comparisons of runs: who may compare what, and how the host's answer lands."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from rest_framework.test import APIClient

from apps.runs.comparisons import comparison_record
from apps.runs.models import Comparison, Run
from hyperbench_web.devstack import Stack
from tests.conftest import (
    create_experiment,
    echo_dataset,
    start_run,
    wait_for_run,
)
from tests.test_leaderboard import _dataset, _run

CHANGELIST = "/admin/runs/run/"


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
    as_alice: APIClient, alice: User
) -> None:
    ds = _dataset("invoices")
    a, b = (
        _spec(_run(alice, ds, "rapidocr", {"cer": 0.02})),
        _spec(_run(alice, ds, "tesseract", {"cer": 0.08})),
    )

    r = as_alice.post("/api/v1/comparisons/", {"runs": [b.pk, a.pk]}, format="json")

    assert r.status_code == 201, r.content
    cmp = Comparison.objects.get()
    assert cmp.run_ids == [b.pk, a.pk]
    assert cmp.state == "queued"


def test_runs_on_different_dataset_versions_are_not_compared(as_alice: APIClient, alice: User) -> None:
    a = _spec(_run(alice, _dataset("invoices"), "rapidocr", {"cer": 0.02}))
    other = _dataset("receipts")
    Run.objects.filter(pk=a.pk).update(manifest_sha256="b" * 64)
    b = _spec(_run(alice, other, "tesseract", {"cer": 0.08}))

    r = as_alice.post("/api/v1/comparisons/", {"runs": [a.pk, b.pk]}, format="json")

    assert r.status_code == 400
    assert "different dataset versions" in r.json()["detail"]
    assert not Comparison.objects.exists()


def test_unfinished_runs_and_other_peoples_runs_are_refused(
    as_alice: APIClient, as_bob: APIClient, alice: User
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

    assert unfinished.status_code == 400
    assert "Only succeeded runs" in unfinished.json()["detail"]
    assert foreign.status_code == 400
    assert "Not found" in str(foreign.json())
    assert single.status_code == 400
    assert not Comparison.objects.exists()


def test_the_hosts_answer_finishes_a_comparison_once(alice: User) -> None:
    ds = _dataset("invoices")
    cmp = Comparison.objects.create(run_ids=[1, 2], dataset=ds)

    comparison_record(
        result={"comparison_id": cmp.pk, "ok": True, "host": "h1", "report_uri": "file:///r.html"}
    )
    comparison_record(result={"comparison_id": cmp.pk, "ok": False, "host": "h2", "reason": "late duplicate"})

    cmp.refresh_from_db()
    assert cmp.state == "succeeded"
    assert cmp.report_uri == "file:///r.html"
    assert cmp.error_reason == ""


def _admin(staff: User) -> Client:
    """A browser logged in as a staff member who may see and change runs in the admin."""
    staff.user_permissions.add(*Permission.objects.filter(content_type__app_label="runs"))
    web = Client()
    web.force_login(staff)
    return web


def _compare_in_the_admin(web: Client, runs: list[Run]) -> str:
    """Tick the runs in the run list and apply the "Compare" action, as staff do."""
    r = web.post(
        CHANGELIST,
        {"action": "compare_runs", "_selected_action": [str(x.pk) for x in runs], "index": "0"},
        follow=True,
    )
    assert r.status_code == 200
    return str(r.content.decode())


def test_staff_compare_two_runs_from_the_run_list(staff: User, alice: User) -> None:
    ds = _dataset("invoices")
    b = _spec(_run(alice, ds, "tesseract", {"cer": 0.08}))
    a = _spec(_run(alice, ds, "rapidocr", {"cer": 0.02}))
    web = _admin(staff)

    page = _compare_in_the_admin(web, [a, b])

    cmp = Comparison.objects.get()
    assert cmp.run_ids == sorted([a.pk, b.pk])
    assert cmp.state == "queued"
    assert cmp.created_by == staff
    assert "Queued" in page
    assert f"/admin/runs/comparison/{cmp.pk}/change/" in page


def test_the_admin_compare_action_says_why_it_refuses(staff: User, alice: User) -> None:
    a = _spec(_run(alice, _dataset("invoices"), "rapidocr", {"cer": 0.02}))
    b = _spec(_run(alice, _dataset("receipts"), "tesseract", {"cer": 0.08}))
    Run.objects.filter(pk=b.pk).update(manifest_sha256="b" * 64)
    web = _admin(staff)

    different = _compare_in_the_admin(web, [a, b])
    single = _compare_in_the_admin(web, [a])

    assert "different dataset versions" in different
    assert "Compare between 2 and 8 runs." in single
    assert not Comparison.objects.exists()


@pytest.mark.docker
def test_a_comparison_started_in_the_admin_ends_with_its_report(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    staff: User,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    ds = roots["datasets"] / "admin-compare" / "1"
    dataset_id = echo_dataset(as_staff, as_alice, images, ds, count=5, seed=31)
    run_ids = [
        start_run(as_alice, create_experiment(as_alice, "echo", dataset_id, params, name=name))
        for name, params in (("echo plain", {}), ("echo again", {"note": "second"}))
    ]
    assert [wait_for_run(as_alice, x)["state"] for x in run_ids] == ["succeeded", "succeeded"]
    web = _admin(staff)

    page = _compare_in_the_admin(web, list(Run.objects.filter(pk__in=run_ids)))

    assert "Queued" in page, page[-3000:]
    cmp = Comparison.objects.latest("pk")
    assert cmp.run_ids == sorted(run_ids)
    deadline = time.monotonic() + 120
    while cmp.state == Comparison.State.QUEUED:
        assert time.monotonic() < deadline, "the comparison did not finish"
        time.sleep(0.5)
        cmp.refresh_from_db()
    assert cmp.state == Comparison.State.SUCCEEDED, cmp.error_reason
    detail = web.get(f"/admin/runs/comparison/{cmp.pk}/change/").content.decode()
    assert f"/api/v1/comparisons/{cmp.pk}/report/" in detail  # the admin links the report
    report = as_staff.get(f"/api/v1/comparisons/{cmp.pk}/report/")
    assert report.status_code == 200
    html = report.getvalue().decode()
    assert f"echo · run {run_ids[0]}" in html
    assert f"echo · run {run_ids[1]}" in html
    assert "Paired bootstrap" in html
    assert "<svg" in html
    # Each run's row carries the throughput its own report shows, not a dash.
    rows = re.findall(r"<tr><td>[AB]</td>.*?</tr>", html, re.S)
    assert len(rows) == 2, rows
    assert all(re.search(r"<td class=num>[0-9.,]+</td></tr>$", r) for r in rows), rows
