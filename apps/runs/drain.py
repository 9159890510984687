"""The hosts' event batches, drained from ``hb.events`` many messages at a time.

One Celery task per message capped the control plane at about a hundred events a
second on two cores (issue 13): the cost was the per-message round trips, not the
database. A drain moves up to ``HYPERBENCH_EVENT_DRAIN_MAX`` messages in one
round trip (a Lua script: ``RPOP`` with a count, the oldest first, onto an
in-flight list of this drain, registered with the time in ``hb.events.inflight``),
applies all their events in one pass (``events_record``: the frequent kinds
set-based), and only then deletes its in-flight list. A control worker killed
mid-drain leaves that list behind; the next drain puts what is in it back on
``hb.events`` once it is older than the broker's visibility timeout (every update
is conditional, so applying a batch twice changes nothing). The beat starts a drain
every ``HYPERBENCH_EVENT_DRAIN_S``; a drain that took a full batch starts the next
at once; several drains (control workers) may run side by side. The hosts' heartbeats
come on the same list (``{"heartbeat": report}`` items, worker/events.py) and are stored
after the events, the newest of each host only.

The messages are kombu's (the hosts publish them with their Celery app's producer,
TLS and ACL user included); the channel's own ``Message`` decodes each one.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, cast

from django.conf import settings

from apps.hosts.services import heartbeats_record
from apps.runs.events import events_record
from worker import contract

logger = logging.getLogger(__name__)

INFLIGHT = contract.EVENTS_QUEUE + ".inflight"  # zset: in-flight list name -> when it was taken

# KEYS: hb.events, this drain's in-flight list, the in-flight zset; ARGV: count, now.
_TAKE = """
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then return {} end
redis.call('RPUSH', KEYS[2], unpack(items))
redis.call('ZADD', KEYS[3], ARGV[2], KEYS[2])
return items
"""
# KEYS: hb.events, the in-flight zset; ARGV: older than. Oldest messages go back to the popping end.
_RESTORE = """
local lists = redis.call('ZRANGEBYSCORE', KEYS[2], 0, ARGV[1])
for _, name in ipairs(lists) do
  local items = redis.call('LRANGE', name, 0, -1)
  for i = #items, 1, -1 do redis.call('RPUSH', KEYS[1], items[i]) end
  redis.call('DEL', name)
  redis.call('ZREM', KEYS[2], name)
end
return #lists
"""


def _decode(channel: Any, raw: bytes) -> tuple[list[contract.Event], list[contract.HostReport]]:
    """A message's events, and the heartbeats it carries (``{"heartbeat": report}`` items)."""
    try:
        payload = channel.Message(json.loads(raw), channel=channel).decode()
    except Exception:  # noqa: BLE001 - a bad message must not hold up the others
        logger.warning("a message on %s that cannot be decoded was dropped", contract.EVENTS_QUEUE)
        return [], []
    if not isinstance(payload, list):
        logger.warning("a message on %s that is no list of events was dropped", contract.EVENTS_QUEUE)
        return [], []
    events = [cast(contract.Event, e) for e in payload if isinstance(e, dict) and "run_id" in e]
    beats = [e["heartbeat"] for e in payload if isinstance(e, dict) and isinstance(e.get("heartbeat"), dict)]
    reports = [cast(contract.HostReport, b) for b in beats if "host" in b and _is_number(b.get("ts"))]
    return events, reports


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def drain_events(app: Any, *, max_messages: int | None = None) -> int:
    """Apply what waits on ``hb.events`` (up to a batch); returns how many messages were taken."""
    limit = max_messages or settings.HYPERBENCH_EVENT_DRAIN_MAX
    visibility = float(app.conf.broker_transport_options.get("visibility_timeout", 3600))
    started = time.monotonic()
    with app.connection_for_read() as conn:
        channel = conn.default_channel
        client = channel.client
        now = time.time()
        restored = client.eval(_RESTORE, 2, contract.EVENTS_QUEUE, INFLIGHT, now - visibility)
        if restored:
            logger.warning(
                "%d batch(es) of a drain that died were put back on %s", restored, contract.EVENTS_QUEUE
            )
        mine = f"{INFLIGHT}.{uuid.uuid4().hex}"
        raws = client.eval(_TAKE, 3, contract.EVENTS_QUEUE, mine, INFLIGHT, limit, now) or []
        if not raws:
            return 0
        decoded = [_decode(channel, raw) for raw in raws]
        events = [e for evs, _ in decoded for e in evs]
        reports = [r for _, rs in decoded for r in rs]
        read = time.monotonic()
        events_record(events=events)  # committed (and the fan-in's stages sent) before the heartbeats
        if reports:
            heartbeats_record(reports)
        client.delete(mine)
        client.zrem(INFLIGHT, mine)
    took = time.monotonic() - started
    logger.log(
        logging.INFO if took > 1.0 else logging.DEBUG,
        "drained %d message(s), %d event(s), %d heartbeat(s): read %.3fs, applied %.3fs",
        len(raws),
        len(events),
        len(reports),
        read - started,
        time.monotonic() - read,
    )
    return len(raws)
