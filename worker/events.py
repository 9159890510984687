"""Events from the host worker to the control worker (queue ``control``), in batches.

Progress is coalesced: a shard's ticks replace each other in a buffer that a
flusher thread sends every ``HYPERBENCH_EVENT_FLUSH_S`` (or sooner, when
``HYPERBENCH_EVENT_BATCH_MAX`` shards are waiting), as one message carrying
every shard's latest tick. An event that changes state (started, shard
succeeded, failed, evaluated, reported, cancelled, and the log lines) is
never coalesced and never waits: it is sent at once, in a batch that first
carries its shard's pending tick, so one shard's events leave in the order
they were made, and the task that made it does not go on until the broker has
it. The batches go to the ``hb.events`` list as plain messages, which the control
side drains many at a time (apps/runs/drain.py); the host's heartbeats go there too
(``send_heartbeat``). Every event carries ``seq``,
strictly increasing in this process (its clock in nanoseconds, bumped past the
last one): the control side applies a shard's progress only forward.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from worker import contract
from worker.celery_app import app
from worker.config import load

logger = logging.getLogger(__name__)

PROGRESS_RETRY = {"max_retries": 1, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1}
# About ten minutes of tries: 0, 1, 2, ... then every 10 s.
STATE_RETRY = {"max_retries": 70, "interval_start": 0, "interval_step": 1, "interval_max": 10}

Send = Callable[[list[dict[str, Any]], bool], None]  # (batch, carries a state change)


def send_batch(batch: list[dict[str, Any]], state: bool) -> None:
    """One message on ``hb.events`` (the anonymous exchange: a push onto that list, nothing declared);
    a state change waits out a broker outage."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            batch,
            exchange="",
            routing_key=contract.EVENTS_QUEUE,
            serializer="json",
            retry=True,
            retry_policy=STATE_RETRY if state else PROGRESS_RETRY,
        )


def send_heartbeat(report: contract.HostReport) -> None:
    """A host's heartbeat as one message on ``hb.events`` (``[{"heartbeat": report}]``), drained with
    the events: a storm of heartbeats (every host of a cluster at once) costs the control side one
    drain, not a Celery task each queued in front of the drains. A lost beat is only a missed beat."""
    with app.producer_or_acquire() as producer:
        producer.publish(
            [{"heartbeat": report}],
            exchange="",
            routing_key=contract.EVENTS_QUEUE,
            serializer="json",
            retry=True,
            retry_policy=PROGRESS_RETRY,
        )


class EventSender:
    """The events of one host process: progress coalesced per shard, state changes sent at once."""

    def __init__(
        self,
        host: str,
        instance: str,
        *,
        send: Send = send_batch,
        flush_s: float = 1.0,
        batch_max: int = 500,
    ) -> None:
        self.host, self.instance = host, instance
        self.send, self.flush_s, self.batch_max = send, max(0.0, flush_s), max(1, batch_max)
        self._pending: dict[tuple[int, int | None, str], dict[str, Any]] = {}
        self._lock = threading.Lock()  # the buffer and the sequence
        self._send_lock = threading.Lock()  # one message at a time leaves this process
        self._seq = 0
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_messages = 0
        self.sent_events = 0

    def _next_seq(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns())
        return self._seq

    def event(self, run_id: int, kind: contract.EventKind, stage: str, **fields: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {
            "run_id": run_id,
            "kind": kind,
            "stage": stage,
            "host": self.host,
            "instance": self.instance,
            "ts": time.time(),
        }
        ev.update({k: v for k, v in fields.items() if v is not None})
        return ev

    def emit(self, run_id: int, kind: contract.EventKind, stage: str, **fields: Any) -> None:
        """Queue a progress tick (the shard's previous one is dropped), or send a state change now."""
        ev = self.event(run_id, kind, stage, **fields)
        # A sync tick names its shard in its data (None: evaluate/report); one shard's sync must not
        # replace another's when one process runs both.
        data = ev.get("data")
        shard = ev.get("shard", data.get("shard") if isinstance(data, dict) else None)
        key = (int(run_id), shard, stage)
        if kind == "progress" and self.flush_s == 0:  # no coalescing: every tick on its own
            with self._lock:
                ev["seq"] = self._next_seq()
            with contextlib.suppress(Exception):  # losing a tick must not kill a shard
                self._send([ev], state=False)
            return
        if kind == "progress":
            with self._lock:
                ev["seq"] = self._next_seq()
                self._pending[key] = ev
                full = len(self._pending) >= self.batch_max
            self._start()
            if full:
                self._wake.set()
            return
        with self._lock:
            ev["seq"] = self._next_seq()
            # The shard's pending ticks go first: its events never overtake each other.
            mine = [k for k in self._pending if k[0] == key[0] and k[1] == key[1]]
            batch = [self._pending.pop(k) for k in mine] + [ev]
        self._send(batch, state=True)

    def flush(self) -> None:
        """Send every pending tick now, as one message; a lost tick is only a tick."""
        with self._lock:
            batch, self._pending = list(self._pending.values()), {}
        if not batch:
            return
        try:
            self._send(batch, state=False)
        except Exception:  # losing progress ticks must not kill a shard
            logger.warning("could not send %d progress event(s)", len(batch), exc_info=True)

    def _send(self, batch: list[dict[str, Any]], *, state: bool) -> None:
        with self._send_lock:
            self.send(batch, state)
            self.sent_messages += 1
            self.sent_events += len(batch)

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._loop, daemon=True, name="hb-events")
            self._thread.start()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_s)
            self._wake.clear()
            self.flush()


_sender: EventSender | None = None
_sender_pid = 0
_sender_lock = threading.Lock()


def sender() -> EventSender:
    """This process's sender (a forked pool child gets its own: a thread does not survive a fork)."""
    global _sender, _sender_pid
    pid = os.getpid()
    if _sender is None or _sender_pid != pid:
        with _sender_lock:
            if _sender is None or _sender_pid != pid:
                cfg = load()
                _sender = EventSender(
                    cfg.hostname, cfg.instance, flush_s=cfg.event_flush_s, batch_max=cfg.event_batch_max
                )
                _sender_pid = pid
                atexit.register(_sender.flush)
    return _sender


def emit(run_id: int, kind: contract.EventKind, stage: str, **fields: Any) -> None:
    """Send one event; the control worker applies it to the DB.

    A progress tick never raises (it is coalesced and sent by the flusher); an event
    that changes state waits out a broker outage (a Redis restart) for up to about ten
    minutes and then raises into the task.
    """
    sender().emit(run_id, kind, stage, **fields)
