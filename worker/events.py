"""Events from the host worker to the control worker (queue ``control``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from worker import contract
from worker.celery_app import app
from worker.config import load

logger = logging.getLogger(__name__)


def emit(run_id: int, kind: contract.EventKind, stage: str, **fields: Any) -> None:
    """Send one event; the control worker applies it to the DB. Never raises into a task."""
    event: dict[str, Any] = {
        "run_id": run_id,
        "kind": kind,
        "stage": stage,
        "host": load().hostname,
        "ts": time.time(),
    }
    event.update({k: v for k, v in fields.items() if v is not None})
    try:
        app.send_task(contract.TASK_RECORD_EVENT, args=[event], queue=contract.Queue.CONTROL)
    except Exception:  # noqa: BLE001 - losing a progress tick must not kill a shard
        if kind == "progress":
            logger.warning("could not send a progress event for run %s", run_id, exc_info=True)
            return
        raise
