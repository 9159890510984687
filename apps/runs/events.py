"""The run state machine: host events applied to the DB by the control worker.

Every transition is a conditional update guarded by the row count
(``filter(pk=..., state=...).update(...)``): at-least-once delivery means any
event may arrive twice, late or out of order, and only the first arrival may
move a run or a shard (``tests/test_event_invariants.py`` holds the rules).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from django.db import transaction
from django.utils import timezone

from apps.runs import bulk, rescore
from apps.runs.models import Run, RunEvent, RunShard
from apps.runs.progress import as_int, record_progress
from apps.runs.services import fail_run, send_stage
from worker import contract

logger = logging.getLogger(__name__)


def _start_report(run: Run, data: dict[str, Any]) -> None:
    metrics = data.get("metrics") or {}
    claimed = Run.objects.filter(pk=run.pk, state=Run.State.EVALUATING).update(
        state=Run.State.REPORTING,
        stage_sent_at=timezone.now(),
        stage_attempt=1,
        metrics=metrics,
        metric_version=str(metrics.get("metric_version", "")),
        metrics_uri=str(data.get("metrics_uri", "")),
        per_sample_uri=str(data.get("per_sample_uri", "")),
        predictions_uri=str(data.get("predictions_uri", "")),
    )
    if claimed != 1:
        return
    run.refresh_from_db()
    send_stage(run, "report")


def _sync_progress_record(*, run: Run, event: contract.Event, data: dict[str, Any]) -> None:
    """Keep one ``progress``/``sync`` RunEvent per (shard, host), holding that sync's latest tick.

    A sync ticks about once a second (files, bytes, rate in ``data``; the host
    puts the shard there, None for evaluate/report): a row per tick would bury
    the run's other events. Ticks may arrive late or twice, so an older tick
    never overwrites a newer one. A tick also counts as a sign of life of its
    shard: a long sync runs no container the reconciler could see.
    """
    raw = data.get("shard", event.get("shard"))
    shard = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    host = event.get("host", "")
    ts = float(event.get("ts") or 0.0)
    data = {**data, "shard": shard, "ts": ts}
    message = event.get("message") or ""
    now = timezone.now()
    with transaction.atomic():
        # Two control workers may apply the first two ticks of a sync at once: the run row's lock
        # (no-key, so it does not block the foreign-key checks of other inserts) makes the second
        # one see the row the first created instead of creating another.
        list(Run.objects.select_for_update(no_key=True).filter(pk=run.pk).values_list("pk", flat=True))
        row = (
            RunEvent.objects.select_for_update()
            .filter(run=run, kind="progress", stage="sync", shard=shard, host=host)
            .order_by("-id")
            .first()
        )
        if row is None:
            RunEvent.objects.create(
                run=run, kind="progress", stage="sync", host=host, shard=shard, message=message, data=data
            )
        elif float((row.data or {}).get("ts") or 0.0) <= ts:
            RunEvent.objects.filter(pk=row.pk).update(message=message, data=data)
    # Outside the run lock: other paths lock a shard before its run, and this order must not cross theirs.
    if shard is not None and run.state not in Run.TERMINAL:
        RunShard.objects.filter(run=run, index=shard, state=RunShard.State.RUNNING, host=host).update(
            updated_at=now
        )


def events_record(*, events: list[contract.Event]) -> None:
    """Apply a batch of host events (control worker): the frequent kinds set-based, the rest in order.

    Per shard a host sends ``started`` before its ticks and its ticks before its end, so
    the batch is applied as: every ``started`` (apps/runs/bulk.py), every inference tick in
    one statement (apps/runs/progress.py), every ``shard_succeeded`` (bulk.py), then the
    other events one by one in the order they came. Events of unknown runs are dropped
    with a warning. One event that cannot be applied (a bug) is logged and does not stop
    the others.
    """
    known = set(
        Run.objects.filter(pk__in={as_int(e.get("run_id")) for e in events}).values_list("pk", flat=True)
    )
    dropped = [e for e in events if as_int(e.get("run_id")) not in known]
    if dropped:
        logger.warning("%d event(s) of unknown runs ignored", len(dropped))
    events = [e for e in events if as_int(e.get("run_id")) in known]
    by_kind: dict[str, list[contract.Event]] = {"started": [], "ticks": [], "shard_succeeded": []}
    rest: list[contract.Event] = []
    for e in events:
        if e.get("kind") == "progress" and e.get("stage") != "sync":
            by_kind["ticks"].append(e)
        elif e.get("kind") in bulk.BULK_KINDS and e.get("stage") == "infer":
            by_kind[e["kind"]].append(e)
        else:
            rest.append(e)
    if by_kind["started"]:
        bulk.apply_started(by_kind["started"])
    record_progress(by_kind["ticks"])
    if by_kind["shard_succeeded"]:
        bulk.apply_succeeded(by_kind["shard_succeeded"])
    for event in rest:
        try:
            event_record(event=event)
        except Exception:
            logger.exception("event %s of run %s not applied", event.get("kind"), event.get("run_id"))


def event_record(*, event: contract.Event) -> None:
    """Apply one host event to the DB (control worker). Safe to call twice, late, or out of order.

    Every change is a conditional update from the states that allow it: a
    terminal run never changes (a rescore's events, which name their evaluation, move only
    that evaluation); a shard moves only from ``pending``/``running``
    and only for the attempt the control side recorded (an event of a
    superseded attempt is kept in the log and changes nothing); ``done`` never
    passes ``total``.
    """
    run_id = int(event["run_id"])
    kind = event["kind"]
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("event for unknown run %s ignored: %s", run_id, kind)
        return
    data = dict(event.get("data") or {})
    if kind in bulk.BULK_KINDS and event["stage"] == "infer" and data.get("evaluation") is None:
        # One event through the same set-based statements as a drain's batch (apps/runs/bulk.py):
        # the transitions of a shard's start and end are written once.
        (bulk.apply_started if kind == "started" else bulk.apply_succeeded)([event])
        return
    shard_index = event.get("shard")
    attempt = event.get("attempt")
    shard = run.shards.filter(index=shard_index).first() if shard_index is not None else None
    # An event that names no attempt (an older host) speaks for the current one.
    current = shard is None or attempt is None or as_int(attempt) == shard.attempt
    if kind == "progress":
        if event["stage"] == "sync":
            _sync_progress_record(run=run, event=event, data=data)
        elif shard is not None and current:
            record_progress([event])
        return
    with transaction.atomic():
        RunEvent.objects.create(
            run=run,
            kind=kind,
            stage=event["stage"],
            host=event.get("host", ""),
            shard=shard_index,
            message=event.get("reason") or event.get("message") or "",
            data=data or None,
        )
        if data.get("evaluation") is not None:
            rescore.apply_event(run, event, data)
            return  # a rescore's events move its evaluation (apps/runs/rescore.py), never the run
        if run.state in Run.TERMINAL or not current or (shard_index is not None and shard is None):
            return  # late events of a finished run, or of a superseded attempt, change nothing
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(run, shard, event, data)


def _on_started(run: Run, shard: RunShard | None, event: contract.Event, data: dict[str, Any]) -> None:
    """A stage other than inference started (inference's ``started`` is bulk.apply_started's)."""
    Run.objects.filter(pk=run.pk, state=Run.State.QUEUED).update(
        state=Run.State.RUNNING, started_at=timezone.now()
    )


def _on_evaluated(run: Run, shard: RunShard | None, event: contract.Event, data: dict[str, Any]) -> None:
    _start_report(run, data)


def _on_reported(run: Run, shard: RunShard | None, event: contract.Event, data: dict[str, Any]) -> None:
    Run.objects.filter(pk=run.pk, state=Run.State.REPORTING).update(
        state=Run.State.SUCCEEDED, report_uri=str(data.get("report_uri", "")), finished_at=timezone.now()
    )


def _on_failed(run: Run, shard: RunShard | None, event: contract.Event, data: dict[str, Any]) -> None:
    stage_state = {"evaluate": Run.State.EVALUATING, "report": Run.State.REPORTING}.get(event["stage"])
    if stage_state is not None and run.state != stage_state:
        return  # a doubled evaluate/report that failed after the run moved on
    if shard is not None:
        moved = RunShard.objects.filter(pk=shard.pk, attempt=shard.attempt, state__in=RunShard.OPEN).update(
            state=RunShard.State.FAILED
        )
        if not moved:
            return  # the shard already ended (succeeded, cancelled): a late failure of it is moot
    where = f"{event['stage']}" + (f" (shard {shard.index})" if shard is not None else "")
    host = event.get("host") or socket.gethostname()
    fail_run(run.pk, f"{where} failed on {host}: {event.get('reason', 'no reason given')}")


_Handler = Callable[[Run, "RunShard | None", contract.Event, dict[str, Any]], None]
_HANDLERS: dict[str, _Handler] = {
    "started": _on_started,
    "evaluated": _on_evaluated,
    "reported": _on_reported,
    "failed": _on_failed,
}
