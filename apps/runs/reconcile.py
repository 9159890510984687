"""The reconciler: nothing stays stuck when a host, a message or a task is lost.

Called every ``HYPERBENCH_RECONCILE_S`` by Celery beat, and at once when a host
worker comes back with a new instance id (``apps/hosts/tasks.py``). Each rule
claims its row with a conditional update, so two reconcilers (or two passes)
never act twice on one thing:

1. a running shard whose host worker restarted (a heartbeat stored after the
   shard last spoke carries another instance id than the shard's attempt was
   started by) or went silent (no
   heartbeat for ``HYPERBENCH_HOST_SILENT_S``, three intervals) moves to its
   next attempt at once;
2. a running shard that sent nothing for ``HYPERBENCH_STALE_SHARD_S`` and whose
   host does not report its container (the last resort, for a live host that
   lost the task);
3. a pending shard of a CPU model that nobody started for
   ``HYPERBENCH_PENDING_SHARD_S`` while a live host had a free slot (its
   message was lost) is sent again as its next attempt;
4. a run stuck in ``evaluating`` or ``reporting`` (its task lost with its
   worker) gets evaluate or report sent again (the host tasks are idempotent);
5. a comparison queued for ``HYPERBENCH_STALE_SHARD_S`` that no host holds,
   while a host is idle, is sent again;
6. a finished run whose containers a live host still reports is stopped again;
7. a rescore (an ``Evaluation``) that no host ran for ``HYPERBENCH_STALE_SHARD_S``
   while a host was idle is failed with the reason, so that the run can be
   rescored again (a rescore is cheap to start over; its run never moves).

Every re-dispatch revokes the superseded attempt's message, and after
``MAX_SHARD_ATTEMPTS`` (or ``MAX_STAGE_ATTEMPTS``) the run fails with a reason.
"""

from __future__ import annotations

import functools
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from apps.hosts.models import Host
from apps.runs import dispatch
from apps.runs.comparisons import send_comparison
from apps.runs.models import Comparison, Evaluation, Run, RunEvent, RunShard
from apps.runs.progress import sum_progress
from apps.runs.services import fail_run, send_stage
from worker import contract

MAX_SHARD_ATTEMPTS = 3
MAX_STAGE_ATTEMPTS = 3


def _runs_container(host: Host | None, run_id: int, *, shard: int | None = None, stage: str = "") -> bool:
    if host is None or host.silent:
        return False
    for c in host.running or []:
        if c.get("run") != run_id:
            continue
        if shard is not None and c.get("shard") != shard:
            continue
        if stage and c.get("stage") != stage:
            continue
        return True
    return False


def _lost_reason(shard: RunShard, host: Host | None, stale_before: datetime) -> str | None:
    """Why a running shard's attempt is lost, or None while it may still be alive."""
    where = shard.host or "its host"
    if (
        host is not None
        and shard.instance
        and host.instance
        and host.instance != shard.instance
        # A report stored after the shard's last word: else the host row may still hold the last
        # start's report while the shard was started by the new one (its `started` drained before
        # its first heartbeat), and the shard is not lost.
        and host.reported_at >= shard.updated_at
    ):
        return f"the host worker on {where} restarted (instance {shard.instance} is gone)"
    if host is not None and host.silent:
        return f"{where} went silent (no heartbeat for {settings.HYPERBENCH_HOST_SILENT_S}s)"
    held = host is not None and host.holds(contract.shard_task_id(shard.run_id, shard.index, shard.attempt))
    if (
        shard.updated_at < stale_before
        and not held
        and not _runs_container(host, shard.run_id, shard=shard.index)
    ):
        return f"shard {shard.index} went quiet on {where} (nothing for {settings.HYPERBENCH_STALE_SHARD_S}s)"
    return None


def _redispatch(shard: RunShard, state: str, reason: str, now: datetime) -> str | None:
    """Move ``shard`` (still in ``state`` at its attempt) to its next attempt and send it; None if
    another pass got there first, or the run failed because the shard used up its attempts."""
    if shard.attempt >= MAX_SHARD_ATTEMPTS:
        fail_run(
            shard.run_id,
            f"infer (shard {shard.index}) was lost {shard.attempt} times (last: {reason}); "
            "check the hosts, then start the run again.",
        )
        return f"run {shard.run_id} shard {shard.index}: failed after {shard.attempt} attempts"
    with transaction.atomic():
        claimed = RunShard.objects.filter(pk=shard.pk, attempt=shard.attempt, state=state).update(
            attempt=shard.attempt + 1,
            state=RunShard.State.PENDING,
            done=0,
            host="",
            instance="",
            updated_at=now,
        )
        if claimed != 1:
            return None
        run = shard.run
        RunEvent.objects.create(
            run=run,
            kind="log",
            stage="infer",
            shard=shard.index,
            message=f"{reason}; dispatched again (attempt {shard.attempt + 1})",
        )
        sum_progress(run)
        old = contract.shard_task_id(run.pk, shard.index, shard.attempt)
        spec, index, attempt = run.spec, shard.index, shard.attempt + 1
        try:
            queue = dispatch.placement(spec, [index], avoid=[shard.host] if shard.host else [])[index]
        except dispatch.Unservable:
            queue = dispatch.shard_queue(spec)  # it waits there for a host that can read the dataset
        transaction.on_commit(lambda: dispatch.resend_shard(old, spec, index, attempt, queue))
    return f"run {shard.run_id} shard {shard.index}: attempt {shard.attempt + 1}"


def _running_shards(hosts: dict[str, Host], now: datetime) -> list[str]:
    stale_before = now - timedelta(seconds=settings.HYPERBENCH_STALE_SHARD_S)
    actions = []
    running = RunShard.objects.filter(
        run__state=Run.State.RUNNING, state=RunShard.State.RUNNING
    ).select_related("run")
    for shard in running:
        reason = _lost_reason(shard, hosts.get(shard.host), stale_before)
        if reason is not None:
            done = _redispatch(shard, RunShard.State.RUNNING, reason, now)
            if done:
                actions.append(done)
    return actions


def _pending_shards(hosts: dict[str, Host], now: datetime) -> list[str]:
    idle = [h.name for h in hosts.values() if h.idle]
    if not idle:
        return []  # every live host is busy: a pending shard is just waiting its turn
    before = now - timedelta(seconds=settings.HYPERBENCH_PENDING_SHARD_S)
    actions = []
    waiting = RunShard.objects.filter(
        run__state__in=(Run.State.QUEUED, Run.State.RUNNING),
        state=RunShard.State.PENDING,
        updated_at__lt=before,
    ).select_related("run")
    for shard in waiting:
        if shard.run.spec.get("model", {}).get("requires_gpu"):
            continue  # a GPU shard may be waiting for a GPU (it re-queues itself); not lost
        if any(
            h.holds(contract.shard_task_id(shard.run_id, shard.index, shard.attempt)) for h in hosts.values()
        ):
            continue  # a host has it (reserved, or just started)
        reason = (
            f"shard {shard.index} was not started for {settings.HYPERBENCH_PENDING_SHARD_S}s although "
            + (f"{idle[0]} was idle (its message was lost)")
        )
        done = _redispatch(shard, RunShard.State.PENDING, reason, now)
        if done:
            actions.append(done)
    return actions


def _stuck_stages(hosts: dict[str, Host], now: datetime) -> list[str]:
    if not any(h.idle for h in hosts.values()):
        return []  # every live host is busy: a queued evaluate/report is waiting its turn, not lost
    before = now - timedelta(seconds=settings.HYPERBENCH_STALE_SHARD_S)
    stage_of = {Run.State.EVALUATING: "evaluate", Run.State.REPORTING: "report"}
    actions = []
    stuck = Run.objects.filter(state__in=list(stage_of), stage_sent_at__lt=before).annotate(
        last_event=Max("events__created_at")
    )
    for run in stuck:
        if run.last_event is not None and run.last_event >= before:
            continue  # it said something recently
        stage = stage_of[Run.State(run.state)]
        task_id = contract.stage_task_id(run.pk, stage, run.stage_attempt)
        if any(_runs_container(h, run.pk, stage=stage) or h.holds(task_id) for h in hosts.values()):
            continue  # slow but alive
        if run.stage_attempt >= MAX_STAGE_ATTEMPTS:
            fail_run(
                run.pk, f"{stage} was lost {run.stage_attempt} times (no host finished it); check the hosts."
            )
            actions.append(f"run {run.pk} {stage}: failed after {run.stage_attempt} attempts")
            continue
        with transaction.atomic():
            claimed = Run.objects.filter(pk=run.pk, state=run.state, stage_attempt=run.stage_attempt).update(
                stage_attempt=run.stage_attempt + 1, stage_sent_at=now
            )
            if claimed != 1:
                continue
            run.refresh_from_db()
            RunEvent.objects.create(
                run=run,
                kind="log",
                stage=stage,
                message=f"{stage} was lost; sent again (try {run.stage_attempt})",
            )
            send_stage(run, stage)
        actions.append(f"run {run.pk} {stage}: sent again (try {run.stage_attempt})")
    return actions


def _stuck_comparisons(hosts: dict[str, Host], now: datetime) -> list[str]:
    if not any(h.idle for h in hosts.values()):
        return []  # every live host is busy: a queued comparison is waiting its turn
    before = now - timedelta(seconds=settings.HYPERBENCH_STALE_SHARD_S)
    actions = []
    for cmp in Comparison.objects.filter(state=Comparison.State.QUEUED, sent_at__lt=before):
        if any(h.holds(contract.comparison_task_id(cmp.pk, cmp.attempt)) for h in hosts.values()):
            continue  # a host is rendering it
        if cmp.attempt >= MAX_STAGE_ATTEMPTS:
            Comparison.objects.filter(pk=cmp.pk, state=Comparison.State.QUEUED, attempt=cmp.attempt).update(
                state=Comparison.State.FAILED,
                finished_at=now,
                error_reason=f"The comparison was lost {cmp.attempt} times (no host finished it); "
                "check the hosts.",
            )
            actions.append(f"comparison {cmp.pk}: failed after {cmp.attempt} attempts")
            continue
        with transaction.atomic():
            claimed = Comparison.objects.filter(
                pk=cmp.pk, state=Comparison.State.QUEUED, attempt=cmp.attempt
            ).update(attempt=cmp.attempt + 1, sent_at=now)
            if claimed != 1:
                continue
            cmp.refresh_from_db()
            send_comparison(cmp)
        actions.append(f"comparison {cmp.pk}: sent again (try {cmp.attempt})")
    return actions


def _leftover_containers(hosts: dict[str, Host]) -> list[str]:
    reported = {c.get("run") for h in hosts.values() if not h.silent for c in (h.running or [])}
    ended = Run.objects.filter(pk__in=[r for r in reported if isinstance(r, int)], state__in=Run.TERMINAL)
    actions = []
    for run_id in ended.values_list("pk", flat=True):
        transaction.on_commit(functools.partial(dispatch.stop_run, run_id))
        actions.append(f"run {run_id}: stop its leftover containers")
    return actions


def _lost_rescores(hosts: dict[str, Host], now: datetime) -> list[str]:
    if not any(h.idle for h in hosts.values()):
        return []  # every live host is busy: the rescore is waiting its turn, not lost
    before = now - timedelta(seconds=settings.HYPERBENCH_STALE_SHARD_S)
    actions = []
    for ev in Evaluation.objects.filter(state__in=Evaluation.ACTIVE, created_at__lt=before):
        said = RunEvent.objects.filter(run_id=ev.run_id, data__evaluation=ev.pk, created_at__gte=before)
        if said.exists():
            continue  # a host spoke of it recently
        stage = "report" if ev.state == Evaluation.State.REPORTING else "evaluate"
        task_id = contract.rescore_task_id(ev.run_id, ev.pk, stage)
        if any(_runs_container(h, ev.run_id, stage=stage) or h.holds(task_id) for h in hosts.values()):
            continue  # slow but alive
        reason = (
            f"{stage} of this rescore was lost: no host ran it for {settings.HYPERBENCH_STALE_SHARD_S}s "
            "while a host was free; rescore the run again."
        )
        moved = Evaluation.objects.filter(pk=ev.pk, state=ev.state).update(
            state=Evaluation.State.FAILED, error_reason=reason, finished_at=now
        )
        if moved:
            actions.append(f"run {ev.run_id} rescore {ev.pk}: {stage} lost, failed")
    return actions


def runs_reconcile(*, now: datetime | None = None) -> list[str]:
    """One pass of every rule (see the module); returns what was done, for the log."""
    now = now or timezone.now()
    hosts = {h.name: h for h in Host.objects.all()}
    return [
        *_running_shards(hosts, now),
        *_pending_shards(hosts, now),
        *_stuck_stages(hosts, now),
        *_stuck_comparisons(hosts, now),
        *_leftover_containers(hosts),
        *_lost_rescores(hosts, now),
    ]
