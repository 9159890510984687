"""The run API's side of reuse: ``reuse`` in the frozen spec, ``cacheable`` models, retry (no broker)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.test import Client
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.runs.models import Experiment, Run


@pytest.fixture(autouse=True)
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    app = mock.MagicMock(name="celery")
    monkeypatch.setattr("apps.runs.dispatch._celery", lambda: app)
    return app


def _experiment(owner: User, *, cacheable: bool = True, public: bool = False) -> Experiment:
    ds, _ = Dataset.objects.get_or_create(
        name="r",
        version="1",
        defaults={"task": "ocr", "source_uri": "file:///r/", "manifest_sha256": "a" * 64, "sample_count": 8},
    )
    model, _ = ModelImage.objects.update_or_create(
        name="r-model",
        defaults={"image": "hyperbench/r:0", "digest": "sha256:" + "b" * 64, "cacheable": cacheable},
    )
    return Experiment.objects.create(name="r", model=model, dataset=ds, owner=owner, public=public)


def _start(client: APIClient, exp: Experiment, **body: Any) -> dict[str, Any]:
    r = client.post("/api/v1/runs/", {"experiment": exp.pk, **body}, format="json")
    assert r.status_code == 201, r.content
    return dict(r.json())


def test_reuse_is_on_by_default_and_frozen_in_the_spec_with_the_cache(
    alice: User, as_alice: APIClient, settings: Any
) -> None:
    settings.HYPERBENCH_ARTIFACTS_URI = "file:///store/"
    settings.HYPERBENCH_PREDICTION_CACHE_URI = ""
    exp = _experiment(alice)

    on, off = _start(as_alice, exp), _start(as_alice, exp, reuse=False)

    assert (on["reuse"], off["reuse"]) == (True, False)
    assert on["cache"] == {"hits": 0, "misses": 0, "resumed": 0}
    spec = Run.objects.get(pk=on["id"]).spec
    assert spec["cache"] == {
        "uri": "file:///store/cache/predictions/",
        "reuse": True,
        "cacheable": True,
        "scope": on["id"],
        "lineage": [on["id"]],
    }
    assert Run.objects.get(pk=off["id"]).spec["cache"]["reuse"] is False


def test_a_model_registered_not_cacheable_says_so_in_the_spec(
    alice: User, as_alice: APIClient, as_staff: APIClient
) -> None:
    r = as_staff.post(
        "/api/v1/models/",
        {"name": "api-ish", "image": "hyperbench/x:0", "digest": "sha256:" + "c" * 64, "cacheable": False},
        format="json",
    )
    assert r.status_code == 201, r.content
    assert r.json()["cacheable"] is False
    exp = _experiment(alice, cacheable=False)

    assert Run.objects.get(pk=_start(as_alice, exp)["id"]).spec["cache"]["cacheable"] is False


def test_a_failed_run_is_retried_as_a_new_run_of_its_frozen_spec(alice: User, as_alice: APIClient) -> None:
    first = _start(as_alice, _experiment(alice), shards=2, reuse=False)
    Run.objects.filter(pk=first["id"]).update(state=Run.State.FAILED)
    old = Run.objects.get(pk=first["id"]).spec

    r = as_alice.post(f"/api/v1/runs/{first['id']}/retry/")

    assert r.status_code == 201, r.content
    new = Run.objects.get(pk=r.json()["id"])
    assert new.retry_of_id == first["id"]
    assert r.json()["retry_of"] == first["id"]
    assert new.state == Run.State.QUEUED
    assert new.shards.count() == 2
    assert new.spec["artifacts_uri"].endswith(f"/runs/{new.pk}/")
    assert new.spec["cache"]["lineage"] == [new.pk, first["id"]]
    assert new.spec["cache"]["scope"] == first["id"]
    assert new.spec["cache"]["reuse"] is False  # as frozen: its own lineage is still reused
    same = ("dataset", "model", "params", "prompt", "shards", "eval_image", "report_image", "limits")
    assert {k: new.spec[k] for k in same} == {k: old[k] for k in same}
    assert new.spec["summary"]["retry_of"] == first["id"]


@pytest.mark.parametrize("state", [Run.State.QUEUED, Run.State.RUNNING, Run.State.SUCCEEDED])
def test_only_a_failed_or_cancelled_run_is_retried(alice: User, as_alice: APIClient, state: str) -> None:
    run = _start(as_alice, _experiment(alice))
    Run.objects.filter(pk=run["id"]).update(state=state)

    r = as_alice.post(f"/api/v1/runs/{run['id']}/retry/")

    assert r.status_code == 409
    assert "only a failed or cancelled run can be retried" in r.json()["detail"]
    assert Run.objects.count() == 1


def test_a_teammate_may_read_a_public_run_but_not_retry_it(
    alice: User, as_alice: APIClient, as_bob: APIClient, as_staff: APIClient
) -> None:
    run = _start(as_alice, _experiment(alice, public=True))
    Run.objects.filter(pk=run["id"]).update(state=Run.State.CANCELLED)

    assert as_bob.post(f"/api/v1/runs/{run['id']}/retry/").status_code == 403
    assert as_staff.post(f"/api/v1/runs/{run['id']}/retry/").status_code == 201


def test_the_admin_retries_the_selected_runs_and_shows_the_cache(alice: User, admin_user: User) -> None:
    run = Run.objects.get(pk=_start(_api(alice), _experiment(alice))["id"])
    Run.objects.filter(pk=run.pk).update(state=Run.State.FAILED)
    web = Client()
    web.force_login(admin_user)

    r = web.post("/admin/runs/run/", {"action": "retry_runs", "_selected_action": [run.pk]}, follow=True)

    assert r.status_code == 200
    new = Run.objects.get(retry_of=run)
    assert f"Run {new.pk} retries run {run.pk}." in r.content.decode()
    page = web.get(f"/admin/runs/run/{new.pk}/change/").content.decode()
    assert "0 hits, 0 misses (0 resumed)" in page


def _api(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client
