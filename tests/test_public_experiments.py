"""Public experiments: everyone signed in reads them (their runs, their leaderboard entries);
only the owner (and staff) act on them."""

from __future__ import annotations

from django.contrib.auth.models import User
from rest_framework.test import APIClient

from apps.runs.models import Experiment, Run
from tests.test_leaderboard import _dataset, _run


def _public_and_private(alice: User) -> tuple[Run, Run]:
    ds = _dataset("shared")
    public = _run(alice, ds, "m-public", {"cer": 0.1})
    private = _run(alice, ds, "m-private", {"cer": 0.2})
    Experiment.objects.filter(pk=public.experiment_id).update(public=True)
    return public, private


def test_a_teammate_sees_public_experiments_runs_and_board_entries_only(
    alice: User, as_bob: APIClient
) -> None:
    public, private = _public_and_private(alice)

    experiments = {e["id"] for e in as_bob.get("/api/v1/experiments/").json()["results"]}
    runs = {r["id"] for r in as_bob.get("/api/v1/runs/").json()["results"]}
    board = as_bob.get("/api/v1/leaderboard/").json()["results"]
    on_board = {e["experiment"] for b in board for e in b["entries"]}

    assert experiments == {public.experiment_id}
    assert runs == {public.pk}
    assert as_bob.get(f"/api/v1/runs/{private.pk}/").status_code == 404
    assert as_bob.get(f"/api/v1/runs/{public.pk}/").status_code == 200
    assert on_board == {public.experiment.name}


def test_only_the_owner_starts_or_cancels_runs_of_a_public_experiment(alice: User, as_bob: APIClient) -> None:
    public, _ = _public_and_private(alice)
    Run.objects.filter(pk=public.pk).update(state=Run.State.RUNNING)

    start = as_bob.post("/api/v1/runs/", {"experiment": public.experiment_id}, format="json")
    cancel = as_bob.post(f"/api/v1/runs/{public.pk}/cancel/")

    assert start.status_code == 403
    assert "owner" in start.json()["detail"]
    assert cancel.status_code == 403
    assert "owner" in cancel.json()["detail"]
    assert Run.objects.get(pk=public.pk).state == "running"


def test_an_owner_makes_an_experiment_public_when_creating_it(alice: User, as_alice: APIClient) -> None:
    ds = _dataset("mine")
    from apps.catalog.models import ModelImage

    ModelImage.objects.create(name="m", image="hyperbench/m:1", digest="sha256:" + "a" * 64)
    r = as_alice.post(
        "/api/v1/experiments/",
        {"name": "open", "model": "m", "dataset": ds.pk, "public": True},
        format="json",
    )
    assert r.status_code == 201, r.content
    assert r.json()["public"] is True
    assert Experiment.objects.get(pk=r.json()["id"]).public
