"""Run quotas per user: concurrent runs, shards per run, runs per day (apps/quotas)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.quotas.models import UserQuota
from apps.quotas.services import quotas_for
from apps.runs import dispatch, services
from apps.runs.models import Experiment, Run
from tests.conftest import _client


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    app = mock.MagicMock(name="celery")
    monkeypatch.setattr("apps.runs.dispatch._celery", lambda: app)
    return app


@pytest.fixture(autouse=True)
def _defaults(settings: Any) -> None:
    settings.HYPERBENCH_QUOTA_CONCURRENT_RUNS = 2
    settings.HYPERBENCH_QUOTA_SHARDS_PER_RUN = 4
    settings.HYPERBENCH_QUOTA_RUNS_PER_DAY = 3


def _experiment(owner: User) -> Experiment:
    ds, _ = Dataset.objects.get_or_create(
        name="q",
        version="1",
        defaults={"task": "ocr", "source_uri": "file:///q/", "manifest_sha256": "a" * 64, "sample_count": 64},
    )
    model, _ = ModelImage.objects.get_or_create(
        name="q-model", defaults={"image": "hyperbench/q:0", "digest": "sha256:" + "b" * 64}
    )
    return Experiment.objects.create(name="q", model=model, dataset=ds, owner=owner)


def _start(client: APIClient, exp: Experiment, shards: int = 1) -> Any:
    return client.post("/api/v1/runs/", {"experiment": exp.pk, "shards": shards}, format="json")


def test_too_many_shards_is_a_403_naming_the_quota_and_how_to_get_more(
    alice: User, as_alice: APIClient
) -> None:
    r = _start(as_alice, _experiment(alice), shards=5)
    assert r.status_code == 403, r.content
    body = r.json()
    assert body["quota"] == "shards_per_run"
    assert body["limit"] == 4
    assert "at most 4 shards" in body["detail"]
    assert "Ask staff" in body["detail"]
    assert not Run.objects.exists()
    assert _start(as_alice, _experiment(alice), shards=4).status_code == 201


def test_concurrent_runs_answer_429_until_one_finishes(alice: User, as_alice: APIClient) -> None:
    exp = _experiment(alice)
    assert _start(as_alice, exp).status_code == 201
    assert _start(as_alice, exp).status_code == 201
    r = _start(as_alice, exp)
    assert r.status_code == 429, r.content
    assert r.json()["quota"] == "concurrent_runs"
    assert r.json()["limit"] == 2
    assert "2 unfinished runs" in r.json()["detail"]
    assert "Retry-After" not in r  # when a run ends is unknown
    oldest = Run.objects.order_by("pk").first()
    assert oldest is not None
    Run.objects.filter(pk=oldest.pk).update(state=Run.State.SUCCEEDED)
    assert _start(as_alice, exp).status_code == 201


@pytest.mark.django_db(transaction=True)
def test_simultaneous_starts_cannot_pass_the_concurrent_runs_check_together(
    alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six starts at the same instant, each slowed between the quota check and its run's row (the
    window a race would use): exactly the quota's two runs exist, the other four are told 429."""
    exp = _experiment(alice)
    create = services._create_run

    def slow_create(*args: Any, **kwargs: Any) -> Run:
        time.sleep(0.3)
        return create(*args, **kwargs)

    monkeypatch.setattr(services, "_create_run", slow_create)
    # A transactional test sees the hosts of the suite's live stack (committed rows), which do not
    # mount this made-up dataset: place the shards on the shared queue as with no host known.
    monkeypatch.setattr(dispatch, "placement", lambda spec, shards, **_: {k: "cpu" for k in shards})
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def start(client: APIClient) -> None:
        try:
            barrier.wait()
            codes.append(_start(client, exp).status_code)
        finally:
            connection.close()

    threads = [threading.Thread(target=start, args=(_client(alice),)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [201, 201, 429, 429, 429, 429], codes  # 400: see the placement above
    assert Run.objects.count() == 2


def test_runs_per_day_answer_429_with_retry_after_then_free_up(alice: User, as_alice: APIClient) -> None:
    exp = _experiment(alice)
    for _ in range(3):
        assert _start(as_alice, exp).status_code == 201
        Run.objects.filter(state=Run.State.QUEUED).update(state=Run.State.SUCCEEDED)
    r = _start(as_alice, exp)
    assert r.status_code == 429, r.content
    assert r.json()["quota"] == "runs_per_day"
    assert r.json()["limit"] == 3
    assert 86000 < int(r["Retry-After"]) <= 86401
    # The oldest run turns a day old: one more may start.
    oldest = Run.objects.order_by("created_at").first()
    assert oldest is not None
    Run.objects.filter(pk=oldest.pk).update(created_at=timezone.now() - timedelta(days=1, seconds=1))
    assert _start(as_alice, exp).status_code == 201


def test_a_teammates_runs_do_not_count(alice: User, bob: User, as_bob: APIClient) -> None:
    exp = _experiment(alice)
    for _ in range(2):
        Run.objects.create(experiment=exp, spec={}, manifest_sha256="a" * 64, created_by=alice)
    assert _start(as_bob, _experiment(bob)).status_code == 201


def test_staff_set_a_users_quota_and_staff_are_unlimited_unless_set(
    alice: User, staff: User, as_alice: APIClient, as_staff: APIClient
) -> None:
    UserQuota.objects.create(user=alice, shards_per_run=8, concurrent_runs=0)  # 0: no limit
    assert _start(as_alice, _experiment(alice), shards=8).status_code == 201
    assert quotas_for(alice).concurrent_runs is None
    assert quotas_for(alice).runs_per_day == 3

    assert quotas_for(staff).shards_per_run is None
    assert _start(as_staff, _experiment(staff), shards=16).status_code == 201
    UserQuota.objects.create(user=staff, shards_per_run=2)
    r = _start(as_staff, _experiment(staff), shards=3)
    assert r.status_code == 403
    assert r.json()["limit"] == 2


def test_the_quota_admin_page_lists_and_edits(staff: User, alice: User) -> None:
    staff.is_superuser = True
    staff.save()
    client = APIClient()
    client.force_login(staff)
    q = UserQuota.objects.create(user=alice, runs_per_day=5)
    assert client.get("/admin/quotas/userquota/").status_code == 200
    assert client.get(f"/admin/quotas/userquota/{q.pk}/change/").status_code == 200
