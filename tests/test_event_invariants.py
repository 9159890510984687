"""The control service under any interleaving of a k-shard run's events.

Hypothesis feeds random sequences (duplicates, reorderings, events of
superseded attempts, progress ticks after success, a cancel or a reconciler
re-dispatch at any point) into ``event_record`` and checks after every step:

- a terminal run never changes again;
- a run is past ``running`` only when every shard succeeded in its current attempt,
  and the recorded predictions are those of that attempt;
- ``done`` never exceeds ``total``, for the run and for each shard, and a progress tick never
  moves a shard's ``done`` backwards;
- a shard of a terminal run never goes back to ``pending``/``running``, nor changes at all.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.hosts.models import Host
from apps.runs.events import event_record, events_record
from apps.runs.models import Run, RunShard
from apps.runs.reconcile import runs_reconcile
from apps.runs.services import run_cancel
from tests.test_leaderboard import _dataset, _run

SAMPLES = 12

event_kinds = st.sampled_from(["started", "progress", "shard_succeeded", "failed", "evaluated", "reported"])


@st.composite
def steps(draw: Any, shards: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for _ in range(draw(st.integers(1, 40))):
        what = draw(st.sampled_from(["event"] * 8 + ["cancel", "supersede"]))
        if what != "event":
            out.append((what, {"shard": draw(st.integers(0, shards - 1))}))
            continue
        kind = draw(event_kinds)
        shard = draw(st.integers(0, shards - 1))
        attempt = draw(st.integers(1, 3))
        done = draw(st.integers(0, SAMPLES + 5))
        total = draw(st.integers(0, SAMPLES + 5))
        stage = {"evaluated": "evaluate", "reported": "report"}.get(kind, "infer")
        if kind == "failed":
            stage = draw(st.sampled_from(["infer", "evaluate", "report"]))
        out.append(("event", {"kind": kind, "shard": shard, "attempt": attempt, "done": done, "total": total,
                              "stage": stage}))  # fmt: skip
    return out


def _event(run: Run, step: dict[str, Any]) -> dict[str, Any]:
    kind, shard, attempt = step["kind"], step["shard"], step["attempt"]
    ev: dict[str, Any] = {"run_id": run.pk, "kind": kind, "stage": step["stage"], "host": "h1", "ts": 0.0}
    if step["stage"] == "infer":
        ev.update(shard=shard, attempt=attempt)
    if kind == "progress":
        ev.update(done=step["done"], total=step["total"])
    if kind == "shard_succeeded":
        ev["data"] = {"predictions_uri": f"file:///a/shards/{shard}/attempt-{attempt}/p.jsonl", "count": 4}
    if kind == "evaluated":
        ev["data"] = {"metrics": {"cer": 0.1}, "metrics_uri": "file:///a/m.json"}
    if kind == "reported":
        ev["data"] = {"report_uri": "file:///a/r.html"}
    if kind == "failed":
        ev["reason"] = "boom"
    return ev


def _snapshot(run: Run) -> tuple[Any, ...]:
    run.refresh_from_db()
    shards = list(run.shards.values_list("index", "state", "attempt", "done", "predictions_uri"))
    return (
        run.state,
        run.metrics,
        run.error_reason,
        run.progress_done,
        run.report_uri,
        run.finished_at,
        shards,
    )


def _done(run: Run) -> dict[tuple[int, int], int]:
    return {(s.index, s.attempt): s.done for s in run.shards.all()}


def _check(run: Run) -> None:
    run.refresh_from_db()
    shards = list(run.shards.all())
    assert 0 <= run.progress_done <= run.progress_total
    for s in shards:
        assert 0 <= s.done <= max(s.total, 0) or (s.done == 0 and s.total == 0)
    if run.state in (Run.State.EVALUATING, Run.State.REPORTING, Run.State.SUCCEEDED):
        for s in shards:
            assert s.state == RunShard.State.SUCCEEDED
            assert f"attempt-{s.attempt}/" in s.predictions_uri, "a superseded attempt's output was recorded"
    if run.state in Run.TERMINAL:
        assert not [s for s in shards if s.state in RunShard.OPEN]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_interleaving_of_events_breaks_the_run_state_machine(alice: User, data: Any) -> None:
    shards = data.draw(st.integers(1, 3))
    plan = data.draw(steps(shards))
    with transaction.atomic():
        run = _run(alice, _dataset(f"d{shards}"), "m", {})
        Run.objects.filter(pk=run.pk).update(
            state=Run.State.QUEUED,
            metrics=None,
            report_uri="",
            progress_done=0,
            progress_total=SAMPLES,
            finished_at=None,
            spec={"run_id": run.pk, "model": {"requires_gpu": False, "gpus": 0}, "summary": {}},
        )
        RunShard.objects.bulk_create(
            [RunShard(run=run, index=i, total=SAMPLES // shards) for i in range(shards)]
        )
        Host.objects.update_or_create(name="h1", defaults={"last_seen": timezone.now(), "instance": "i1"})
        frozen: tuple[Any, ...] | None = None
        before_done: dict[tuple[int, int], int] = {}
        # Events also arrive as a host's batches (events_record): ticks in bulk, then the rest in order.
        batched = data.draw(st.booleans())
        pending: list[Any] = []
        for n, (what, step) in enumerate(plan):
            if batched and what == "event":
                pending.append(_event(run, step))
                if n + 1 < len(plan) and not data.draw(st.booleans()):
                    continue  # the batch goes on
                events_record(events=pending)
                pending = []
            elif what == "cancel":
                run_cancel(run=run)
            elif what == "supersede":
                # The host of this shard restarted: the reconciler moves a running shard on.
                RunShard.objects.filter(run=run, index=step["shard"], state=RunShard.State.RUNNING).update(
                    instance="i0"
                )
                runs_reconcile(now=timezone.now() + timedelta(seconds=1))
            else:
                event_record(event=_event(run, step))  # type: ignore[arg-type]
            _check(run)
            now_done = _done(run)
            if what == "event" and step["kind"] == "progress":
                for key, n in now_done.items():
                    assert n >= before_done.get(key, 0), "a late progress tick moved a shard backwards"
            before_done = now_done
            if frozen is not None:
                assert _snapshot(run) == frozen, f"a terminal run changed after {what} {step}"
            elif run.state in Run.TERMINAL:
                frozen = _snapshot(run)
        transaction.set_rollback(True)
