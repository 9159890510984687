"""The control plane at scale: progress coalesced and batched on the host, applied in bulk.

The sender is tested with a recording transport; the bulk application on the test DB
(SQLite, and PostgreSQL in the second pass); the guarantees end to end with the real
control worker, Redis and a host process killed between two batches.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, cast

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.runs.events import events_record
from apps.runs.models import Run, RunShard
from hyperbench_web.devstack import REPO, Stack
from tests.test_leaderboard import _dataset, _run
from worker import contract
from worker.events import EventSender


class _Wire:
    """A transport that records what would leave the host: (batch, carries a state change)."""

    def __init__(self) -> None:
        self.sent: list[tuple[list[dict[str, Any]], bool]] = []

    def __call__(self, batch: list[dict[str, Any]], state: bool) -> None:
        self.sent.append((batch, state))


def test_a_hundred_ticks_of_a_shard_leave_as_one_message_with_the_last_value() -> None:
    wire = _Wire()
    sender = EventSender("h1", "i1", send=wire, flush_s=3600)
    for done in range(1, 101):
        sender.emit(7, "progress", "infer", shard=0, attempt=1, done=done, total=100)
        sender.emit(7, "progress", "infer", shard=1, attempt=1, done=done // 2, total=100)
    assert wire.sent == [], "ticks wait for the flush"
    sender.flush()
    assert len(wire.sent) == 1
    batch, state = wire.sent[0]
    assert not state
    assert sorted((e["shard"], e["done"]) for e in batch) == [(0, 100), (1, 50)]


def test_a_state_change_leaves_at_once_after_its_own_shards_pending_tick_only() -> None:
    wire = _Wire()
    sender = EventSender("h1", "i1", send=wire, flush_s=3600)
    sender.emit(7, "progress", "infer", shard=0, attempt=1, done=4, total=4)
    sender.emit(7, "progress", "infer", shard=1, attempt=1, done=2, total=4)
    sender.emit(7, "shard_succeeded", "infer", shard=0, attempt=1, data={"count": 4})
    assert len(wire.sent) == 1
    batch, state = wire.sent[0]
    assert state
    assert [(e["kind"], e["shard"]) for e in batch] == [("progress", 0), ("shard_succeeded", 0)]
    seqs = [e["seq"] for e in batch]
    assert seqs == sorted(seqs), "one shard's events in the order made"
    assert len(set(seqs)) == 2
    sender.flush()
    assert [(e["shard"], e["done"]) for e in wire.sent[1][0]] == [(1, 2)], "the other shard's tick waited"


def test_two_shards_syncs_in_one_process_keep_their_own_last_tick() -> None:
    wire = _Wire()
    sender = EventSender("h1", "i1", send=wire, flush_s=3600)
    sender.emit(7, "progress", "sync", data={"shard": 0, "phase": "done"})
    sender.emit(7, "shard_succeeded", "infer", shard=0, attempt=1)  # carries shard 0's sync tick
    sender.emit(7, "progress", "sync", data={"shard": 1, "phase": "download"})
    sender.emit(7, "progress", "sync", data={"shard": None, "phase": "done"})  # evaluate's
    sender.flush()
    first, later = wire.sent[0][0], wire.sent[1][0]
    assert [(e["kind"], e.get("data", {}).get("shard")) for e in first] == [
        ("progress", 0),
        ("shard_succeeded", None),
    ]
    assert sorted(str(e["data"]["shard"]) for e in later) == ["1", "None"]


def test_a_full_buffer_is_sent_before_the_interval() -> None:
    wire = _Wire()
    sender = EventSender("h1", "i1", send=wire, flush_s=3600, batch_max=10)
    for shard in range(10):
        sender.emit(7, "progress", "infer", shard=shard, attempt=1, done=1, total=2)
    deadline = time.monotonic() + 5
    while not wire.sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(wire.sent) == 1
    assert len(wire.sent[0][0]) == 10


def _running_run(owner: User, shards: int, name: str) -> Run:
    run = _run(owner, _dataset(name), "m", {})
    Run.objects.filter(pk=run.pk).update(
        state=Run.State.RUNNING, progress_done=0, progress_total=10 * shards, metrics=None, finished_at=None
    )
    RunShard.objects.bulk_create(
        [RunShard(run=run, index=i, total=10, state=RunShard.State.RUNNING) for i in range(shards)]
    )
    return run


def _tick(run: Run, shard: int, done: int, seq: int, attempt: int = 1) -> contract.Event:
    return {
        "run_id": run.pk,
        "kind": "progress",
        "stage": "infer",
        "host": "h1",
        "shard": shard,
        "attempt": attempt,
        "done": done,
        "total": 10,
        "seq": seq,
        "ts": 0.0,
    }


@pytest.mark.django_db
def test_a_batch_costs_the_same_statements_for_two_ticks_or_two_hundred(alice: User) -> None:
    small = _running_run(alice, 2, "small")
    big = [_running_run(alice, 8, f"big{i}") for i in range(25)]
    with CaptureQueriesContext(connection) as few:
        events_record(events=[_tick(small, s, 3, 1) for s in range(2)])
    with CaptureQueriesContext(connection) as many:
        events_record(events=[_tick(r, s, 5, 1) for r in big for s in range(8)])
    assert len(many.captured_queries) == len(few.captured_queries) <= 6
    assert set(RunShard.objects.filter(run__in=big).values_list("done", flat=True)) == {5}
    assert set(Run.objects.filter(pk__in=[r.pk for r in big]).values_list("progress_done", flat=True)) == {40}


@pytest.mark.django_db
def test_bulk_progress_only_moves_forward_and_only_the_current_attempt(alice: User) -> None:
    run = _running_run(alice, 2, "fwd")
    events_record(events=[_tick(run, 0, 6, 10), _tick(run, 0, 4, 11)])
    assert RunShard.objects.get(run=run, index=0).done == 6, "a lower count never wins in a batch"
    events_record(events=[_tick(run, 0, 3, 12)])
    assert RunShard.objects.get(run=run, index=0).done == 6, "nor in a later one"
    events_record(events=[_tick(run, 0, 9, 5)])
    assert RunShard.objects.get(run=run, index=0).done == 6, "an older tick moves nothing"
    events_record(events=[_tick(run, 1, 8, 20, attempt=2)])
    assert RunShard.objects.get(run=run, index=1).done == 0, "a superseded attempt's tick moves nothing"
    events_record(events=[_tick(run, 0, 8, 13), _tick(run, 1, 2, 13)])
    run.refresh_from_db()
    assert run.progress_done == 10


_KILLED_HOST = """
import json, os, signal, sys
from worker.events import EventSender, send_batch
run_id = int(sys.argv[1])
sender = EventSender("killed-host", "k1", send=send_batch, flush_s=3600)
sender.emit(run_id, "started", "infer", shard=0, attempt=1)
sender.emit(run_id, "progress", "infer", shard=0, attempt=1, done=6, total=10)
sender.emit(run_id, "progress", "infer", shard=1, attempt=1, done=4, total=10)
sender.emit(run_id, "shard_succeeded", "infer", shard=0, attempt=1,
            data={"predictions_uri": "file:///x/shards/0/attempt-1/predictions.jsonl", "count": 10})
os.kill(os.getpid(), signal.SIGKILL)  # between two batches: shard 1's tick never leaves
"""


@pytest.mark.docker
def test_a_host_killed_between_batches_loses_no_state_change(
    platform: Stack, redis_url: str, alice: User
) -> None:
    run = _running_run(alice, 2, "killed")
    env = {**os.environ, "CELERY_BROKER_URL": redis_url, "HYPERBENCH_HOSTNAME": "killed-host"}
    env = {k: v for k, v in env.items() if not k.startswith("DJANGO_")}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_HOST, str(run.pk)], cwd=REPO, env=env, timeout=60, check=False
    )
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    shard0 = RunShard.objects.get(run=run, index=0)
    while shard0.state != RunShard.State.SUCCEEDED and time.monotonic() < deadline:
        time.sleep(0.2)
        shard0.refresh_from_db()
    assert shard0.state == RunShard.State.SUCCEEDED, "the state change arrived"
    assert shard0.done == 10
    assert shard0.host == "killed-host"
    shard1 = RunShard.objects.get(run=run, index=1)
    assert shard1.done == 0, "the pending tick died with the host"
    assert shard1.state == RunShard.State.RUNNING
    started = run.events.filter(kind="started", shard=0).count()
    assert started == 1, json.dumps(list(run.events.values("kind", "shard")))


def _report(host: str, ts: float, **fields: Any) -> contract.HostReport:
    report = {"host": host, "worker": f"celery@{host}", "instance": f"{host}-1", "ts": ts, **fields}
    return cast(contract.HostReport, report)


@pytest.mark.django_db
def test_heartbeats_keep_the_newest_of_each_host_and_a_bad_one_drops_no_other() -> None:
    from apps.hosts.models import Host
    from apps.hosts.services import heartbeats_record

    now = time.time()
    heartbeats_record(
        [
            _report("hb-a", now - 5, active=1),
            _report("hb-a", now, active=2),  # newer: kept
            _report("hb-a", now - 9, active=3),  # older, later in the batch: dropped
            _report("hb-bad", now, slots="many"),  # not a number: logged, the others stored
            _report("hb-b", now, active=0),
        ]
    )
    hosts = dict(Host.objects.values_list("name", "active"))
    assert hosts == {"hb-a": 2, "hb-b": 0}


_HEARTBEAT = """
import sys, time
from worker.events import send_heartbeat
send_heartbeat({"host": sys.argv[1], "worker": "celery@" + sys.argv[1], "instance": "i-1",
                "ts": time.time(), "slots": 3, "active": 1, "running": []})
"""


@pytest.mark.docker
def test_a_heartbeat_sent_on_the_event_list_is_stored_by_the_drain(platform: Stack, redis_url: str) -> None:
    from apps.hosts.models import Host

    env = {**os.environ, "CELERY_BROKER_URL": redis_url}
    env = {k: v for k, v in env.items() if not k.startswith("DJANGO_")}
    proc = subprocess.run(
        [sys.executable, "-c", _HEARTBEAT, "hb-listed"], cwd=REPO, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0
    deadline = time.monotonic() + 30
    while not Host.objects.filter(name="hb-listed").exists():
        assert time.monotonic() < deadline, "the drain never stored the heartbeat"
        time.sleep(0.2)
    host = Host.objects.get(name="hb-listed")
    assert (host.instance, host.slots, host.active) == ("i-1", 3, 1)
