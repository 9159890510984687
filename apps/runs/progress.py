"""Progress ticks applied to the DB: one at a time (an old host) or a batch in one statement.

A batch's ticks (the latest per shard, coalesced on the host) move every shard
they name with one ``UPDATE ... FROM`` (the rows in one parameter: apps/runs/sqlrows.py)
and every run they touch with
one more: the control worker's cost grows with the number of batches, not of
events. The guards are those of a single tick: the shard's current attempt,
an open shard of an active run, ``done`` only forward (never past ``total``),
and a tick older (by ``seq``) than the last applied one moves nothing but the
shard's sign of life.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import connection, transaction
from django.db.models import F, OuterRef, Subquery, Sum
from django.db.models.functions import Coalesce, Least
from django.utils import timezone

from apps.runs.models import Run, RunShard
from apps.runs.sqlrows import rows_table
from worker import contract


def as_int(value: object, default: int = 0) -> int:
    try:
        return int(str(value))
    except ValueError:
        return default


def sum_progress(run: Run) -> None:
    sum_progress_of([run.pk])


def sum_progress_of(run_ids: Iterable[int]) -> None:
    """Each active run's ``progress_done``: the sum of its shards' ``done``, in one statement."""
    ids = sorted(set(run_ids))
    if not ids:
        return
    shard_sum = (
        RunShard.objects.filter(run=OuterRef("pk")).values("run").annotate(s=Sum("done")).values("s")[:1]
    )
    Run.objects.filter(pk__in=ids, state__in=Run.ACTIVE).update(
        progress_done=Least(Coalesce(Subquery(shard_sum), 0), F("progress_total"))
    )


def _row(event: contract.Event | dict[str, Any]) -> tuple[int, int, int, int, int, int] | None:
    shard, attempt = event.get("shard"), event.get("attempt")
    if shard is None:
        return None
    total = max(0, as_int(event.get("total", 0)))
    done = min(max(0, as_int(event.get("done", 0))), total)
    # An event that names no attempt (an older host) speaks for the current one: 0 matches any.
    return (
        as_int(event["run_id"]),
        as_int(shard),
        as_int(attempt) if attempt is not None else 0,
        done,
        total,
        max(0, as_int(event.get("seq", 0))),
    )


def record_progress(ticks: list[contract.Event] | list[dict[str, Any]]) -> int:
    """Apply inference progress ticks (stage ``infer``) in one statement; returns the shards moved.

    Per shard, the batch's highest count (and its highest ``seq``) is what is applied.
    """
    latest: dict[tuple[int, int, int], tuple[int, int, int, int, int, int]] = {}
    for ev in ticks:
        row = _row(ev)
        if row is None:
            continue
        key = (row[0], row[1], row[2])
        if key in latest:
            old = latest[key]
            best = row if (row[3], row[5]) >= (old[3], old[5]) else old
            row = (*best[:5], max(row[5], old[5]))
        latest[key] = row
    if not latest:
        return 0
    rows = list(latest.values())
    table = connection.ops.quote_name(RunShard._meta.db_table)
    runs = connection.ops.quote_name(Run._meta.db_table)
    q = connection.ops.quote_name
    values, params = rows_table(rows, ("bigint", "integer", "integer", "integer", "integer", "bigint"))
    forward = f"(v.column6 = 0 OR v.column6 > s.{q('progress_seq')}) AND s.{q('done')} <= v.column4"
    open_states = ", ".join(["%s"] * len(RunShard.OPEN))
    active = ", ".join(["%s"] * len(Run.ACTIVE))
    # Only quoted identifiers and placeholders are formatted in; every value is a parameter.
    sql = (
        f"UPDATE {table} AS s SET "  # noqa: S608
        f"{q('done')} = CASE WHEN {forward} THEN v.column4 ELSE s.{q('done')} END, "
        f"{q('total')} = CASE WHEN {forward} THEN v.column5 ELSE s.{q('total')} END, "
        f"{q('progress_seq')} = CASE WHEN {forward} THEN v.column6 ELSE s.{q('progress_seq')} END, "
        f"{q('state')} = %s, {q('updated_at')} = %s "
        f"FROM {values} AS v "
        f"WHERE s.{q('run_id')} = v.column1 AND s.{q('index')} = v.column2 "
        f"AND (v.column3 = 0 OR s.{q('attempt')} = v.column3) "
        f"AND s.{q('state')} IN ({open_states}) "
        f"AND s.{q('run_id')} IN (SELECT {q('id')} FROM {runs} WHERE {q('state')} IN ({active}))"
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql, [RunShard.State.RUNNING, now, *params, *RunShard.OPEN, *Run.ACTIVE])
        moved = cur.rowcount
        sum_progress_of(row[0] for row in rows)
    return moved
