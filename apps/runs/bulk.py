"""The two frequent state changes of a batch, applied set-based: ``started`` and ``shard_succeeded``.

A cluster's shards start and end in bursts (a run's shards together; a host's GPUs
together), so these two are applied for a whole drained batch at once, with the
guards of the one-event path (apps/runs/events.py): every event is kept in the run's
log; a shard moves only from an open state, only for the attempt the control side
recorded, only while its run is active; only the first delivery of a shard's end
counts (its time is added once); and the run whose last shard ended is claimed for
evaluation once. The statements are conditional ``UPDATE ... FROM`` (the rows in one
parameter: apps/runs/sqlrows.py)
with ``RETURNING``, which SQLite (3.35+) and PostgreSQL both run.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import connection, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from apps.runs.models import Run, RunEvent, RunShard
from apps.runs.progress import as_int, sum_progress_of
from apps.runs.services import send_stage
from apps.runs.sqlrows import rows_table
from worker import contract

BULK_KINDS = ("started", "shard_succeeded")
# (run, index, attempt, predictions_uri, count, errors, host, instance, cache_hits, resumed)
_SUCCEEDED_TYPES = (
    "bigint",
    "integer",
    "integer",
    "text",
    "integer",
    "integer",
    "text",
    "text",
    "integer",
    "integer",
)


def cache_counts(data: dict[str, Any]) -> dict[str, int]:
    """A shard_succeeded's prediction-cache counts (absent from an older host: zero)."""
    cache = data.get("cache")
    if not isinstance(cache, dict):
        return {"cache_hits": 0, "resumed": 0}
    return {
        "cache_hits": max(0, as_int(cache.get("hits", 0))),
        "resumed": max(0, as_int(cache.get("resumed", 0))),
    }


def _q(name: str) -> str:
    return connection.ops.quote_name(name)


def _log(events: list[contract.Event]) -> None:
    RunEvent.objects.bulk_create(
        [
            RunEvent(
                run_id=as_int(e["run_id"]),
                kind=e["kind"],
                stage=e["stage"],
                host=e.get("host", ""),
                shard=e.get("shard"),
                message=e.get("reason") or e.get("message") or "",
                data=dict(e.get("data") or {}) or None,
            )
            for e in events
        ]
    )


def _to_running(run_ids: set[int]) -> None:
    Run.objects.filter(pk__in=run_ids, state=Run.State.QUEUED).update(
        state=Run.State.RUNNING, started_at=timezone.now()
    )


def _update_shards(
    set_sql: str, set_params: list[Any], rows: list[tuple[Any, ...]], types: tuple[str, ...]
) -> list[tuple[Any, ...]]:
    """``UPDATE`` the open shards of active runs named by ``rows`` (run, index, attempt, ...); the
    moved rows come back as (run, index, attempt). Attempt 0 (an older host's event) matches any."""
    values, params = rows_table(rows, types)
    table, runs = _q(RunShard._meta.db_table), _q(Run._meta.db_table)
    open_states = ", ".join(["%s"] * len(RunShard.OPEN))
    active = ", ".join(["%s"] * len(Run.ACTIVE))
    sql = (
        f"UPDATE {table} AS s SET {set_sql} FROM {values} AS v "  # noqa: S608 - identifiers only
        f"WHERE s.{_q('run_id')} = v.column1 AND s.{_q('index')} = v.column2 "
        f"AND (v.column3 = 0 OR s.{_q('attempt')} = v.column3) AND s.{_q('state')} IN ({open_states}) "
        f"AND s.{_q('run_id')} IN (SELECT {_q('id')} FROM {runs} WHERE {_q('state')} IN ({active})) "
        # Unqualified: SQLite's RETURNING does not take the table's alias (nothing in v has these names).
        f"RETURNING {_q('run_id')}, {_q('index')}, {_q('attempt')}"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*set_params, *params, *RunShard.OPEN, *Run.ACTIVE])
        return [tuple(r) for r in cur.fetchall()]


def _row(e: contract.Event) -> tuple[int, int, int]:
    attempt = e.get("attempt")
    return as_int(e["run_id"]), as_int(e.get("shard")), as_int(attempt) if attempt is not None else 0


def apply_started(events: list[contract.Event]) -> None:
    """Open shards of active runs move to ``running`` on the host that said so."""
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with transaction.atomic():
        _log(events)
        _to_running({as_int(e["run_id"]) for e in events})
        rows = [
            (*_row(e), e.get("host", ""), str(e.get("instance", "")))
            for e in events
            if e.get("shard") is not None
        ]
        if rows:
            _update_shards(
                f"{_q('state')} = %s, {_q('host')} = v.column4, {_q('instance')} = v.column5, "
                f"{_q('updated_at')} = %s",
                [RunShard.State.RUNNING, now],
                rows,
                ("bigint", "integer", "integer", "text", "text"),
            )


def apply_succeeded(events: list[contract.Event]) -> None:
    """The shards' ends: each recorded once, the runs' times summed once, the finished runs claimed."""
    rows, facts = [], {}
    for e in events:
        if e.get("shard") is None:
            continue
        data = dict(e.get("data") or {})
        count = data.get("count")
        n = max(0, as_int(count)) if count is not None else -1  # -1: keep the shard's own total
        key = _row(e)
        uri, errors = str(data.get("predictions_uri", "")), as_int(data.get("errors", 0))
        cached = cache_counts(data)
        host, instance = e.get("host", ""), str(e.get("instance", ""))
        rows.append((*key, uri, n, errors, host, instance, cached["cache_hits"], cached["resumed"]))
        facts[key[:2]] = data
    with transaction.atomic():
        _log(events)
        _to_running({as_int(e["run_id"]) for e in events})
        if not rows:
            return
        d, t = _q("done"), _q("total")
        moved = _update_shards(
            f"{_q('state')} = %s, {_q('predictions_uri')} = v.column4, "
            f"{d} = CASE WHEN v.column5 < 0 THEN s.{t} ELSE v.column5 END, "
            f"{t} = CASE WHEN v.column5 > s.{t} THEN v.column5 ELSE s.{t} END, "
            f"{_q('errors')} = v.column6, {_q('host')} = v.column7, {_q('instance')} = v.column8, "
            f"{_q('cache_hits')} = v.column9, {_q('resumed')} = v.column10",
            [RunShard.State.SUCCEEDED],
            rows,
            _SUCCEEDED_TYPES,
        )
        _add_times(moved, facts)
        runs = {int(r) for r, _, _ in moved}
        sum_progress_of(runs)
        _claim_finished(runs)


def _add_times(moved: list[tuple[Any, ...]], facts: dict[tuple[int, int], dict[str, Any]]) -> None:
    """Each first-recorded shard end adds its inference (and GPU) time to its run once, in one statement."""
    per_run: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r, k, _ in moved:
        per_run[int(r)].append(facts.get((int(r), int(k)), {}))
    if not per_run:
        return
    gpus_of = {
        pk: (int(m.get("gpus", 0)) if (m := (spec or {}).get("model", {})).get("requires_gpu") else 0)
        for pk, spec in Run.objects.filter(pk__in=per_run).values_list("pk", "spec")
    }
    rows = []
    for pk, ends in per_run.items():
        seconds = sum(float(str(d.get("duration_s", 0.0))) for d in ends)
        digest = next((str(d["image_digest"]) for d in reversed(ends) if d.get("image_digest")), "")
        rows.append((pk, seconds, seconds * gpus_of.get(pk, 0), digest))
    values, params = rows_table(rows, ("bigint", "double precision", "double precision", "text"))
    table = _q(Run._meta.db_table)
    inf, gpu, dig = _q("inference_s"), _q("gpu_seconds"), _q("image_digest")
    sql = (
        f"UPDATE {table} AS r SET {inf} = r.{inf} + v.column2, {gpu} = r.{gpu} + v.column3, "  # noqa: S608
        f"{dig} = CASE WHEN v.column4 = '' THEN r.{dig} ELSE v.column4 END "
        f"FROM {values} AS v WHERE r.{_q('id')} = v.column1 AND r.{_q('state')} = %s"
    )
    with connection.cursor() as cur:
        cur.execute(sql, [*params, Run.State.RUNNING])


def _claim_finished(run_ids: set[int]) -> None:
    """The fan-in: a running run none of whose shards is unfinished is claimed for evaluation, once
    (one conditional statement), and its evaluation is sent."""
    if not run_ids:
        return
    unfinished = RunShard.objects.filter(run=OuterRef("pk")).exclude(state=RunShard.State.SUCCEEDED)
    ready = Run.objects.filter(pk__in=run_ids, state=Run.State.RUNNING).filter(~Exists(unfinished))
    claimed = list(ready.values_list("pk", flat=True))
    if not claimed:
        return
    # The same condition in the UPDATE: a run another drain claimed meanwhile is not claimed twice.
    table, shards = _q(Run._meta.db_table), _q(RunShard._meta.db_table)
    marks = ", ".join(["%s"] * len(claimed))
    sql = (
        f"UPDATE {table} SET {_q('state')} = %s, {_q('stage_sent_at')} = %s, {_q('stage_attempt')} = 1 "  # noqa: S608
        f"WHERE {_q('id')} IN ({marks}) AND {_q('state')} = %s AND NOT EXISTS (SELECT 1 FROM {shards} s "
        f"WHERE s.{_q('run_id')} = {table}.{_q('id')} AND s.{_q('state')} <> %s) RETURNING {_q('id')}"
    )
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cur:
        cur.execute(sql, [Run.State.EVALUATING, now, *claimed, Run.State.RUNNING, RunShard.State.SUCCEEDED])
        mine = [int(r[0]) for r in cur.fetchall()]
    by_run: dict[int, list[RunShard]] = defaultdict(list)
    for shard in RunShard.objects.filter(run_id__in=mine).order_by("run_id", "index"):
        by_run[shard.run_id].append(shard)
    for run in Run.objects.filter(pk__in=mine):
        send_stage(run, "evaluate", by_run[run.pk])
