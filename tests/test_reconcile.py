"""The reconciler: quiet shards are dispatched again, live slow ones are left alone, attempts are bounded."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.auth.models import User
from django.utils import timezone

from apps.hosts.models import Host
from apps.runs.events import event_record
from apps.runs.models import Run, RunShard
from apps.runs.reconcile import MAX_SHARD_ATTEMPTS, runs_reconcile
from tests.test_leaderboard import _dataset, _run
from worker import contract


def _running_shard(alice: User, *, attempt: int = 1, host: str = "gpu-01") -> RunShard:
    run = _run(alice, _dataset("d"), "m", {"cer": 0.1})
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.RUNNING, spec={"model": {"requires_gpu": False}, "run_id": run.pk}
    )
    shard = RunShard.objects.create(
        run=run, index=0, attempt=attempt, state=RunShard.State.RUNNING, host=host
    )
    RunShard.objects.filter(pk=shard.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    return shard


def test_a_quiet_shard_on_a_silent_host_is_dispatched_again(alice: User) -> None:
    shard = _running_shard(alice)
    hour_ago = timezone.now() - timedelta(hours=1)
    Host.objects.create(
        name="gpu-01", last_seen=hour_ago, reported_at=hour_ago, running=[{"run": shard.run_id, "shard": 0}]
    )

    actions = runs_reconcile()

    shard.refresh_from_db()
    assert actions == [f"run {shard.run_id} shard 0: attempt 2"]
    assert (shard.attempt, shard.state) == (2, "pending")


def test_a_slow_shard_whose_host_still_runs_its_container_is_left_alone(alice: User) -> None:
    shard = _running_shard(alice)
    Host.objects.create(name="gpu-01", last_seen=timezone.now(), running=[{"run": shard.run_id, "shard": 0}])

    assert runs_reconcile() == []
    shard.refresh_from_db()
    assert shard.attempt == 1


def test_a_shard_that_went_quiet_too_often_fails_the_run_with_a_reason(alice: User) -> None:
    shard = _running_shard(alice, attempt=MAX_SHARD_ATTEMPTS)

    runs_reconcile()

    run = Run.objects.get(pk=shard.run_id)
    assert run.state == "failed"
    assert "infer (shard 0) was lost 3 times" in run.error_reason
    assert "went silent" in run.error_reason or "went quiet on gpu-01" in run.error_reason


def _event(run_id: int, kind: str, attempt: int, **fields: object) -> contract.Event:
    return {"run_id": run_id, "kind": kind, "stage": "infer", "host": "gpu-01", "shard": 0,
            "attempt": attempt, "ts": 0.0, **fields}  # type: ignore[typeddict-item]  # fmt: skip


def test_a_superseded_attempt_that_fails_or_ticks_late_changes_nothing(alice: User) -> None:
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
    assert run.state == "failed"
    assert "exited with 137" in run.error_reason


def test_a_shard_of_a_host_that_came_back_as_a_new_instance_moves_at_once(alice: User) -> None:
    shard = _running_shard(alice)
    RunShard.objects.filter(pk=shard.pk).update(updated_at=timezone.now(), instance="old-start")
    # Alive and recent, but a new worker start: it cannot be running what the old start ran.
    Host.objects.create(name="gpu-01", last_seen=timezone.now(), instance="new-start")

    actions = runs_reconcile()

    shard.refresh_from_db()
    assert actions == [f"run {shard.run_id} shard 0: attempt 2"]
    assert (shard.attempt, shard.state, shard.host, shard.instance) == (2, "pending", "", "")
    log = Run.objects.get(pk=shard.run_id).events.get(kind="log").message
    assert "gpu-01 restarted" in log
    assert "attempt 2" in log


def test_a_shard_started_by_a_new_instance_before_its_first_heartbeat_is_left_alone(alice: User) -> None:
    """The new start's `started` was drained before its first heartbeat: the host row still holds
    the previous start's report. The shard is not lost; it moves only if a report stored after
    it names another instance."""
    now = timezone.now()
    Host.objects.create(
        name="gpu-01", last_seen=now, instance="previous-start", reported_at=now - timedelta(seconds=1)
    )
    shard = _running_shard(alice)
    RunShard.objects.filter(pk=shard.pk).update(updated_at=now, instance="new-start")

    assert runs_reconcile() == []

    Host.objects.filter(name="gpu-01").update(instance="new-start", reported_at=timezone.now())
    assert runs_reconcile() == []
    Host.objects.filter(name="gpu-01").update(instance="a-later-start", reported_at=timezone.now())
    assert runs_reconcile() == [f"run {shard.run_id} shard 0: attempt 2"]


def test_a_shard_of_a_live_host_on_the_same_instance_is_left_alone(alice: User) -> None:
    shard = _running_shard(alice)
    RunShard.objects.filter(pk=shard.pk).update(updated_at=timezone.now(), instance="same")
    Host.objects.create(name="gpu-01", last_seen=timezone.now(), instance="same")

    assert runs_reconcile() == []


def test_a_pending_shard_nobody_started_while_a_host_was_idle_is_sent_again(alice: User) -> None:
    shard = _running_shard(alice)
    RunShard.objects.filter(pk=shard.pk).update(state=RunShard.State.PENDING, host="")
    Host.objects.create(name="idle-01", last_seen=timezone.now(), slots=1, active=0)

    assert runs_reconcile() == [f"run {shard.run_id} shard 0: attempt 2"]
    # A busy cluster is not a lost message: nothing moves while every host is busy.
    RunShard.objects.filter(pk=shard.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    Host.objects.filter(name="idle-01").update(active=1)
    assert runs_reconcile() == []


def test_a_run_stuck_in_evaluating_gets_evaluate_sent_again_then_fails(alice: User) -> None:
    shard = _running_shard(alice)
    run = Run.objects.get(pk=shard.run_id)
    long_ago = timezone.now() - timedelta(hours=1)
    RunShard.objects.filter(pk=shard.pk).update(state=RunShard.State.SUCCEEDED)
    Run.objects.filter(pk=run.pk).update(state=Run.State.EVALUATING, stage_sent_at=long_ago)
    host = Host.objects.create(name="cpu-01", last_seen=timezone.now(), slots=1, active=1)
    assert runs_reconcile() == [], "every host busy: the evaluate message is waiting its turn, not lost"
    Host.objects.filter(pk=host.pk).update(tasks=[f"hb-run{run.pk}-evaluate-a1"], active=0)
    assert runs_reconcile() == [], "a host holds the evaluate task: alive"
    Host.objects.filter(pk=host.pk).update(tasks=[])

    assert runs_reconcile() == [f"run {run.pk} evaluate: sent again (try 2)"]
    run.refresh_from_db()
    assert (run.state, run.stage_attempt) == ("evaluating", 2)
    # It said something just now (the log line of the re-send): not stuck yet.
    assert runs_reconcile() == []

    Run.objects.filter(pk=run.pk).update(stage_attempt=3, stage_sent_at=long_ago)
    run.events.update(created_at=long_ago)
    runs_reconcile()
    run.refresh_from_db()
    assert run.state == "failed"
    assert "evaluate was lost 3 times" in run.error_reason


def test_the_reconciler_asks_hosts_again_to_stop_containers_of_a_finished_run(alice: User) -> None:
    shard = _running_shard(alice)
    Run.objects.filter(pk=shard.run_id).update(state=Run.State.CANCELLED)
    Host.objects.create(name="gpu-01", last_seen=timezone.now(), running=[{"run": shard.run_id, "shard": 0}])

    assert runs_reconcile() == [f"run {shard.run_id}: stop its leftover containers"]


def test_a_comparison_whose_task_was_lost_is_sent_again_then_fails(alice: User) -> None:
    from apps.runs.models import Comparison

    run = _run(alice, _dataset("cmp"), "m", {"cer": 0.1})
    long_ago = timezone.now() - timedelta(hours=1)
    cmp = Comparison.objects.create(
        run_ids=[run.pk, run.pk], dataset=run.experiment.dataset, sent_at=long_ago
    )
    Run.objects.filter(pk=run.pk).update(spec={"dataset": {}, "limits": {}, "summary": {}})
    host = Host.objects.create(name="cpu-01", last_seen=timezone.now(), slots=1, active=0)
    Host.objects.filter(pk=host.pk).update(tasks=[f"hb-cmp{cmp.pk}-a1"])
    assert runs_reconcile() == [], "a host holds it: it is being rendered"
    Host.objects.filter(pk=host.pk).update(tasks=[])

    assert runs_reconcile() == [f"comparison {cmp.pk}: sent again (try 2)"]

    Comparison.objects.filter(pk=cmp.pk).update(attempt=3, sent_at=long_ago)
    runs_reconcile()
    cmp.refresh_from_db()
    assert cmp.state == "failed"
    assert "lost 3 times" in cmp.error_reason


def test_a_late_progress_tick_never_moves_a_shard_backwards(alice: User) -> None:
    shard = _running_shard(alice)
    RunShard.objects.filter(pk=shard.pk).update(total=10)

    event_record(event=_event(shard.run_id, "progress", 1, done=7, total=10))
    event_record(event=_event(shard.run_id, "progress", 1, done=4, total=10))  # sent earlier, applied later

    shard.refresh_from_db()
    assert shard.done == 7
    assert Run.objects.get(pk=shard.run_id).progress_done == 7


def test_a_rescore_no_host_ran_is_failed_with_its_reason_so_the_run_can_be_rescored(alice: User) -> None:
    from apps.runs.models import Evaluation

    run = _run(alice, _dataset("lost-rescore"), "m", {"cer": 0.1})
    ev = Evaluation.objects.create(
        run=run, eval_image="hyperbench/eval:1", eval_image_digest="sha256:" + "e" * 64
    )
    long_ago = timezone.now() - timedelta(hours=1)
    Evaluation.objects.filter(pk=ev.pk).update(created_at=long_ago)
    host = Host.objects.create(name="cpu-01", last_seen=timezone.now(), slots=1, active=1)
    assert runs_reconcile() == [], "every host busy: the rescore is waiting its turn, not lost"
    task_id = contract.rescore_task_id(run.pk, ev.pk, "evaluate")
    Host.objects.filter(pk=host.pk).update(tasks=[task_id], active=0)
    assert runs_reconcile() == [], "a host holds its evaluate task: alive"
    Host.objects.filter(pk=host.pk).update(tasks=[])

    assert runs_reconcile() == [f"run {run.pk} rescore {ev.pk}: evaluate lost, failed"]
    ev.refresh_from_db()
    assert ev.state == Evaluation.State.FAILED
    assert "rescore the run again" in ev.error_reason
    assert runs_reconcile() == [], "a failed rescore is left alone"
    run.refresh_from_db()
    assert run.state == Run.State.SUCCEEDED, "the run itself never moves"
