"""The control plane's line to one host: stop a cancelled run's containers, now.

``hb_stop_run`` is a Celery remote-control command, not a task: the worker's
main process serves it from its event loop while every pool slot is busy
running a container (a task on the host's own queue would wait behind them).
The command leaves a marker under the work directory, which the pool children
read before they start a container and at every tick while one runs, and it
stops the run's containers on this host in a thread of its own.

The control side also revokes the run's task ids (``contract.shard_task_id``),
so a shard still queued at the cancel is discarded when a worker receives it.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from celery.worker.control import control_command

from worker import contract
from worker.config import HostConfig, load

logger = logging.getLogger(__name__)

MARKER_TTL_S = 7 * 24 * 3600


def _marker(cfg: HostConfig, run_id: int) -> Path:
    return cfg.work_dir / "cancelled" / str(int(run_id))


def mark_cancelled(cfg: HostConfig, run_id: int) -> None:
    path = _marker(cfg, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def is_cancelled(cfg: HostConfig, run_id: int) -> bool:
    """Whether this host was told that ``run_id`` is cancelled (one ``stat``: cheap at every tick)."""
    return _marker(cfg, run_id).exists()


def prune_markers(cfg: HostConfig, now: float | None = None) -> int:
    """Forget cancels older than a week (their runs' messages are long gone)."""
    now = time.time() if now is None else now
    removed = 0
    folder = cfg.work_dir / "cancelled"
    for p in folder.iterdir() if folder.is_dir() else []:
        try:
            if now - p.stat().st_mtime > MARKER_TTL_S:
                p.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def stop_run_here(cfg: HostConfig, run_id: int) -> int:
    """Mark ``run_id`` cancelled on this host and stop its containers here; returns how many."""
    from worker import containers

    mark_cancelled(cfg, run_id)
    try:
        n = containers.stop_run(cfg.hostname, run_id)
    except Exception:  # the marker still stops the container at its next tick
        logger.warning("could not stop the containers of cancelled run %s", run_id, exc_info=True)
        return 0
    if n:
        logger.warning("run %s was cancelled: stopped %d container(s)", run_id, n)
    return n


@control_command(
    name=contract.CONTROL_STOP_RUN,
    args=[("run_id", int)],
    signature="<run_id>",
)
def _hb_stop_run(state: Any, run_id: int) -> dict[str, Any]:
    cfg = load()
    mark_cancelled(cfg, run_id)  # at once: a child about to start a container sees it
    threading.Thread(
        target=stop_run_here, args=(cfg, int(run_id)), name=f"hb-stop-{run_id}", daemon=True
    ).start()
    return {"ok": f"stopping run {run_id} on {cfg.hostname}"}
