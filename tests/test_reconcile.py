"""The reconciler: quiet shards are dispatched again, live slow ones are left alone, attempts are bounded."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import AbstractUser
from django.utils import timezone

from apps.hosts.models import Host
from apps.runs.models import Run, RunShard
from apps.runs.services import MAX_SHARD_ATTEMPTS, event_record, runs_reconcile
from tests.test_leaderboard import _dataset, _run
from worker import contract


def _running_shard(alice: AbstractUser, *, attempt: int = 1, host: str = "gpu-01") -> RunShard:
    run = _run(alice, _dataset("d"), "m", {"cer": 0.1})
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.RUNNING, spec={"model": {"requires_gpu": False}, "run_id": run.pk}
    )
    shard = RunShard.objects.create(
        run=run, index=0, attempt=attempt, state=RunShard.State.RUNNING, host=host
    )
    RunShard.objects.filter(pk=shard.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    return shard


def test_a_quiet_shard_on_a_silent_host_is_dispatched_again(alice: AbstractUser) -> None:
    shard = _running_shard(alice)
    Host.objects.create(
        name="gpu-01",
        last_seen=timezone.now() - timedelta(hours=1),
        running=[{"run": shard.run_id, "shard": 0}],
    )

    actions = runs_reconcile()

    shard.refresh_from_db()
    assert actions == [f"run {shard.run_id} shard 0: attempt 2"]
    assert (shard.attempt, shard.state) == (2, "pending")


def test_a_slow_shard_whose_host_still_runs_its_container_is_left_alone(alice: AbstractUser) -> None:
    shard = _running_shard(alice)
    Host.objects.create(name="gpu-01", last_seen=timezone.now(), running=[{"run": shard.run_id, "shard": 0}])

    assert runs_reconcile() == []
    shard.refresh_from_db()
    assert shard.attempt == 1


def test_a_shard_that_went_quiet_too_often_fails_the_run_with_a_reason(alice: AbstractUser) -> None:
    shard = _running_shard(alice, attempt=MAX_SHARD_ATTEMPTS)

    runs_reconcile()

    run = Run.objects.get(pk=shard.run_id)
    assert run.state == "failed" and "went quiet on gpu-01 3 times" in run.error_reason


def _event(run_id: int, kind: str, attempt: int, **fields: object) -> contract.Event:
    return {"run_id": run_id, "kind": kind, "stage": "infer", "host": "gpu-01", "shard": 0,
            "attempt": attempt, "ts": 0.0, **fields}  # type: ignore[typeddict-item]  # fmt: skip


def test_a_superseded_attempt_that_fails_or_ticks_late_changes_nothing(alice: AbstractUser) -> None:
    shard = _running_shard(alice, attempt=2)  # attempt 1's host went quiet; attempt 2 owns the shard
    RunShard.objects.filter(pk=shard.pk).update(done=3, total=10)

    event_record(event=_event(shard.run_id, "progress", 1, done=9, total=10))
    event_record(event=_event(shard.run_id, "failed", 1, reason="container exited with 137"))

    shard.refresh_from_db()
    run = Run.objects.get(pk=shard.run_id)
    assert (run.state, run.error_reason) == ("running", "")
    assert (shard.state, shard.done) == ("running", 3)
    assert run.events.filter(kind="failed").count() == 1, "the stale failure is kept as an event"

    event_record(event=_event(shard.run_id, "failed", 2, reason="container exited with 137"))

    run.refresh_from_db()
    assert run.state == "failed" and "exited with 137" in run.error_reason
