"""Re-score without re-inference: the API, the evaluation's state machine, the leaderboard and the
management command, with the broker replaced (tests/test_rescore_e2e.py runs the real parts)."""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from apps.catalog.models import Dataset, ModelImage
from apps.runs.events import event_record
from apps.runs.models import Evaluation, Experiment, Run
from apps.runs.selectors import leaderboard
from worker import contract


@pytest.fixture(autouse=True)
def broker(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    app = mock.MagicMock(name="celery")
    monkeypatch.setattr("apps.runs.dispatch._celery", lambda: app)
    # The test's transaction never commits: run what would be sent on commit at once.
    monkeypatch.setattr("apps.runs.rescore.transaction.on_commit", lambda f, *a, **k: f())
    return app


def _experiment(owner: User, name: str = "s", *, public: bool = False) -> Experiment:
    ds, _ = Dataset.objects.get_or_create(
        name="s",
        version="1",
        defaults={"task": "ocr", "source_uri": "file:///s/", "manifest_sha256": "a" * 64, "sample_count": 4},
    )
    model, _ = ModelImage.objects.update_or_create(
        name=f"{name}-model", defaults={"image": "hyperbench/s:0", "digest": "sha256:" + "b" * 64}
    )
    return Experiment.objects.create(name=name, model=model, dataset=ds, owner=owner, public=public)


def _metrics(version: str, cer: float) -> dict[str, Any]:
    return {"metric_version": version, "primary_metric": "cer", "metrics": {"cer": {"value": cer}}}


def _succeeded(client: APIClient, exp: Experiment, version: str = "2.1", cer: float = 0.5) -> Run:
    r = client.post("/api/v1/runs/", {"experiment": exp.pk}, format="json")
    assert r.status_code == 201, r.content
    run = Run.objects.get(pk=r.json()["id"])
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.SUCCEEDED,
        metrics=_metrics(version, cer),
        metric_version=version,
        predictions_uri=run.spec["artifacts_uri"] + "predictions.jsonl",
    )
    run.refresh_from_db()
    return run


def _event(
    run: Run, ev: int, kind: str, stage: str = "evaluate", reason: str = "", **data: Any
) -> contract.Event:
    """A host event of the rescore ``ev`` (as stagekit/systemstages send it)."""
    event: dict[str, Any] = {"run_id": run.pk, "kind": kind, "stage": stage, "host": "h"}
    if reason:
        event["reason"] = reason
    event["data"] = {"evaluation": ev, **data}
    return event  # type: ignore[return-value]


def _sent(broker: mock.MagicMock) -> list[tuple[str, dict[str, Any], str]]:
    return [(c.args[0], c.kwargs["args"][0], c.kwargs["task_id"]) for c in broker.send_task.call_args_list]


def test_a_rescore_sends_evaluate_on_the_stored_predictions_with_todays_eval_image(
    alice: User, as_alice: APIClient, broker: mock.MagicMock, settings: Any
) -> None:
    run = _succeeded(as_alice, _experiment(alice), version="2.0")
    broker.reset_mock()

    r = as_alice.post(f"/api/v1/runs/{run.pk}/rescore/")

    assert r.status_code == 201, r.content
    body = r.json()
    assert (body["run"], body["state"]) == (run.pk, "queued")
    assert body["eval_image"] == settings.HYPERBENCH_EVAL_IMAGE
    assert body["eval_image_digest"] == settings.HYPERBENCH_EVAL_IMAGE_DIGEST
    [(task, payload, task_id)] = _sent(broker)
    assert task == contract.TASK_EVALUATE
    assert task_id == f"hb-run{run.pk}-rescore{body['id']}-evaluate"
    assert payload["rescore"] == {"evaluation": body["id"], "predictions_uri": run.predictions_uri}
    assert payload["spec"]["artifacts_uri"] == run.spec["artifacts_uri"] + f"evaluations/{body['id']}/"
    assert payload["spec"]["model"] == run.spec["model"]
    # One at a time per run.
    again = as_alice.post(f"/api/v1/runs/{run.pk}/rescore/")
    assert again.status_code == 409
    assert "being re-scored already" in again.json()["detail"]


def test_rescores_under_way_count_towards_the_concurrent_runs_quota(
    alice: User, as_alice: APIClient, settings: Any
) -> None:
    """A rescore runs containers like a run's end: with a quota of 2, two rescores under way
    leave room for no third, nor for a run; once one has ended, the next may start."""
    runs = [_succeeded(as_alice, _experiment(alice, f"r{i}")) for i in range(3)]
    settings.HYPERBENCH_QUOTA_CONCURRENT_RUNS = 2
    for run in runs[:2]:
        assert as_alice.post(f"/api/v1/runs/{run.pk}/rescore/").status_code == 201

    third = as_alice.post(f"/api/v1/runs/{runs[2].pk}/rescore/")
    assert third.status_code == 429, third.content
    assert third.json()["quota"] == "concurrent_runs"
    assert "2 unfinished runs and re-scores" in third.json()["detail"]
    start = as_alice.post("/api/v1/runs/", {"experiment": runs[0].experiment_id}, format="json")
    assert start.status_code == 429
    assert Evaluation.objects.count() == 2

    Evaluation.objects.filter(run=runs[0]).update(state=Evaluation.State.SUCCEEDED)
    assert as_alice.post(f"/api/v1/runs/{runs[2].pk}/rescore/").status_code == 201


@pytest.mark.parametrize(
    "state", [Run.State.QUEUED, Run.State.RUNNING, Run.State.FAILED, Run.State.CANCELLED]
)
def test_only_a_succeeded_run_is_rescored(alice: User, as_alice: APIClient, state: str) -> None:
    run = _succeeded(as_alice, _experiment(alice))
    Run.objects.filter(pk=run.pk).update(state=state)

    r = as_alice.post(f"/api/v1/runs/{run.pk}/rescore/")

    assert r.status_code == 409
    assert "only a succeeded run" in r.json()["detail"]
    assert not Evaluation.objects.exists()


def test_another_users_run_is_not_found_and_a_public_one_not_rescored(
    alice: User, as_alice: APIClient, as_bob: APIClient, as_staff: APIClient
) -> None:
    private = _succeeded(as_alice, _experiment(alice, "p"))
    public = _succeeded(as_alice, _experiment(alice, "q", public=True))

    assert as_bob.post(f"/api/v1/runs/{private.pk}/rescore/").status_code == 404
    assert as_bob.post(f"/api/v1/runs/{public.pk}/rescore/").status_code == 403
    assert as_staff.post(f"/api/v1/runs/{public.pk}/rescore/").status_code == 201
    assert not Evaluation.objects.filter(run=private).exists()


def test_the_evaluation_moves_forward_once_and_the_run_never_moves(
    alice: User, as_alice: APIClient, broker: mock.MagicMock
) -> None:
    run = _succeeded(as_alice, _experiment(alice), version="2.0", cer=0.5)
    ev = as_alice.post(f"/api/v1/runs/{run.pk}/rescore/").json()["id"]
    broker.reset_mock()

    event_record(event=_event(run, ev, "started"))
    assert Evaluation.objects.get(pk=ev).state == "evaluating"
    evaluated = _event(
        run, ev, "evaluated", metrics=_metrics("2.1", 0.25), metrics_uri="m", per_sample_uri="p"
    )
    event_record(event=evaluated)
    event_record(event=evaluated)  # doubled: one report
    event_record(event=_event(run, ev, "started"))  # late: changes nothing
    row = Evaluation.objects.get(pk=ev)
    assert (row.state, row.metric_version, row.metrics_uri) == ("reporting", "2.1", "m")
    [(task, payload, task_id)] = _sent(broker)
    assert (task, task_id) == (contract.TASK_REPORT, f"hb-run{run.pk}-rescore{ev}-report")
    assert payload["rescore"] == {"evaluation": ev}
    assert payload["metrics_uri"] == "m"
    assert "no inference" in payload["run_facts"]["rescore"]

    event_record(event=_event(run, ev, "failed", reason="late evaluate failure"))  # not its stage now
    event_record(event=_event(run, ev, "reported", stage="report", report_uri="r"))
    event_record(event=_event(run, ev, "failed", stage="report", reason="late"))
    row.refresh_from_db()
    assert (row.state, row.report_uri, row.error_reason) == ("succeeded", "r", "")
    fresh = Run.objects.get(pk=run.pk)
    assert (fresh.state, fresh.metric_version, fresh.metrics) == ("succeeded", "2.0", run.metrics)
    detail = as_alice.get(f"/api/v1/runs/{run.pk}/").json()
    assert [e["id"] for e in detail["evaluations"]] == [ev]
    assert detail["metric_version"] == "2.0"


def test_a_failed_rescore_is_recorded_on_the_evaluation_and_another_may_start(
    alice: User, as_alice: APIClient
) -> None:
    run = _succeeded(as_alice, _experiment(alice))
    ev = as_alice.post(f"/api/v1/runs/{run.pk}/rescore/").json()["id"]

    event_record(event=_event(run, ev, "failed", reason="eval container exited 1"))

    row = Evaluation.objects.get(pk=ev)
    assert row.state == "failed"
    assert "eval container exited 1" in row.error_reason
    assert Run.objects.get(pk=run.pk).state == "succeeded"
    assert as_alice.post(f"/api/v1/runs/{run.pk}/rescore/").status_code == 201


def test_the_leaderboard_ranks_a_run_on_its_newest_evaluation_of_the_current_version(
    alice: User, as_alice: APIClient
) -> None:
    old = _succeeded(as_alice, _experiment(alice, "old"), version="2.0", cer=0.1)
    new = _succeeded(as_alice, _experiment(alice, "new"), version="2.1", cer=0.3)

    [board] = leaderboard(datasets=Dataset.objects.all())
    assert [(e.run.pk, e.rank) for e in board.entries] == [(new.pk, 1), (old.pk, None)]

    ev = as_alice.post(f"/api/v1/runs/{old.pk}/rescore/").json()["id"]
    event_record(event=_event(old, ev, "evaluated", metrics=_metrics("2.1", 0.2)))
    [board] = leaderboard(datasets=Dataset.objects.all())
    assert [(e.run.pk, e.rank) for e in board.entries] == [(new.pk, 1), (old.pk, None)]  # still reporting

    event_record(event=_event(old, ev, "reported", stage="report", report_uri="r"))
    [board] = leaderboard(datasets=Dataset.objects.all())
    assert board.metric_version == "2.1"
    assert [(e.run.pk, e.rank, e.value) for e in board.entries] == [(old.pk, 1, 0.2), (new.pk, 2, 0.3)]
    assert board.as_dict()["entries"][0]["evaluation"] == ev
    assert board.as_dict()["entries"][0]["metric_version"] == "2.1"


def test_the_command_rescores_every_run_below_a_version_in_batches(
    alice: User, as_alice: APIClient, broker: mock.MagicMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [_succeeded(as_alice, _experiment(alice, f"e{i}"), version="2.0") for i in range(3)]
    current = _succeeded(as_alice, _experiment(alice, "cur"), version="2.1")
    in_flight: list[int] = []

    def finish(*args: Any, **kwargs: Any) -> None:
        # Stands in for the host: each batch's evaluations succeed while the command waits.
        batch = list(Evaluation.objects.filter(state=Evaluation.State.QUEUED))
        in_flight.append(len(batch))
        Evaluation.objects.filter(pk__in=[e.pk for e in batch]).update(
            state=Evaluation.State.SUCCEEDED, metric_version="2.1"
        )

    monkeypatch.setattr("apps.runs.management.commands.rescore.time.sleep", finish)
    call_command("rescore", "--metric-version-below", "2.1", "--batch", "2")

    assert in_flight == [2, 1]
    assert sorted(Evaluation.objects.values_list("run_id", flat=True)) == [r.pk for r in runs]
    assert not Evaluation.objects.filter(run=current).exists()
    call_command("rescore", "--metric-version-below", "2.1")  # nothing left below 2.1
    assert Evaluation.objects.count() == 3
    with pytest.raises(CommandError):
        call_command("rescore", "--metric-version-below", "2.1", "--batch", "0")


def test_the_admin_rescores_the_selected_runs_and_lists_their_evaluations(
    alice: User, as_alice: APIClient, admin_user: User
) -> None:
    run = _succeeded(as_alice, _experiment(alice))
    web = Client()
    web.force_login(admin_user)

    r = web.post("/admin/runs/run/", {"action": "rescore_runs", "_selected_action": [run.pk]}, follow=True)

    ev = Evaluation.objects.get(run=run)
    assert f"Evaluation {ev.pk} re-scores run {run.pk}." in r.content.decode()
    page = web.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert "Evaluations (rescores" in page
    assert ev.eval_image in page
