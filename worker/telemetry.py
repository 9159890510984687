"""Host telemetry: GPUs (NVML), the node cache and the containers running here.

Every host worker sends a ``HostReport`` on ``hb.events`` (drained with the events) every
``heartbeat_s`` seconds from a daemon thread of its main process; the web side
shows hosts, their GPUs, what runs where, and hosts that went silent.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from worker import contract
from worker.config import HostConfig
from worker.gpus import list_gpus, nvml_available
from worker.manifest import DATASET_JSON
from worker.nodecache import CacheSettings, NodeCache, S3Settings

logger = logging.getLogger(__name__)


def cached_versions(cache_dir: Path, budget_bytes: int = 0) -> list[contract.CachedDataset]:
    """The complete dataset versions of the node cache under ``cache_dir``, most recently used first.

    Read through :meth:`worker.nodecache.NodeCache.entries`, the cache's own view:
    last use is the mtime of ``locks/<name>/<sha>.lease`` (touched by every sync
    and lease) and a version is in use while some process holds that lease. The
    human version name comes from the cached ``dataset.json``. No S3 access.
    """
    # Listing needs no endpoint or keys: a NodeCache with empty S3 settings never contacts S3 here.
    cache = NodeCache(
        CacheSettings(root=cache_dir, budget_bytes=budget_bytes),
        S3Settings(endpoint_url=None, region="", access_key_id="", secret_access_key=""),
    )
    out: list[contract.CachedDataset] = []
    try:
        entries = cache.entries()
    except OSError:
        logger.warning("could not list the node cache at %s", cache_dir, exc_info=True)
        return out
    for e in entries:
        if not e.complete:
            continue  # a sync in progress (or one a killed process left): not usable yet
        out.append(
            {
                "name": e.name,
                "version": _version_name(e.path),
                "manifest_sha256": e.manifest_sha256,
                "bytes": e.bytes,
                "last_used": e.last_used,
                "in_use": e.in_use,
            }
        )
    return out


def _version_name(version_dir: Path) -> str:
    try:
        info = json.loads((version_dir / DATASET_JSON).read_bytes()[: 1024 * 1024])
    except (OSError, ValueError):
        return ""
    return str(info.get("version", "")) if isinstance(info, dict) else ""


def running_containers() -> list[contract.RunningContainer]:
    from worker import containers

    try:
        found = containers.client().containers.list(filters={"label": containers.MANAGED_LABEL})
    except Exception:  # telemetry must never take the worker down
        logger.warning("could not list containers for telemetry", exc_info=True)
        return []
    out: list[contract.RunningContainer] = []
    for c in found:
        labels = c.labels
        requests = (c.attrs.get("HostConfig") or {}).get("DeviceRequests") or []
        gpus = [str(d) for r in requests for d in (r.get("DeviceIDs") or [])]
        shard = labels.get("org.hyperbench.shard")
        out.append(
            {
                "run": int(labels.get("org.hyperbench.run", "0") or 0),
                "shard": int(shard) if shard and shard.isdigit() else None,
                "stage": labels.get("org.hyperbench.stage", ""),
                "gpus": gpus,
                "started": str((c.attrs.get("State") or {}).get("StartedAt", "")),
            }
        )
    return out


def _active_tasks() -> int:
    """Tasks this worker's main process has handed to its pool and not yet seen finish."""
    from celery.worker import state

    return len(state.active_requests)


def _task_ids() -> list[str]:
    """Ids of the tasks this worker holds, running or reserved (the control side's ids are
    deterministic, so it reads here whether a shard or a stage is still in a host's hands)."""
    from celery.worker import state

    held = [*state.active_requests, *state.reserved_requests]
    return sorted({str(r.id) for r in held if getattr(r, "id", None)})[:1000]


def collect(
    cfg: HostConfig, worker_name: str, *, cache_budget_bytes: int | None = None, slots: int = 1
) -> contract.HostReport:
    """One heartbeat: who this host is (instance, queue, dataset roots), GPUs, the node cache
    (versions, bytes, budget), its pool's load and the containers running here.

    Args:
        cfg: The host's settings; the cache budget defaults to ``cfg.cache_budget_bytes``.
        worker_name: The Celery worker's name, as the admin shows it.
        cache_budget_bytes: Overrides the configured budget (tests).
        slots: The worker's pool size (tasks it runs at once).
    """
    gpus = list_gpus()
    budget = cfg.cache_budget_bytes if cache_budget_bytes is None else cache_budget_bytes
    cache = cached_versions(cfg.cache_dir, budget)
    return {
        "host": cfg.hostname,
        "worker": worker_name,
        "instance": cfg.instance,
        "queue": contract.host_queue(cfg.hostname),
        "dataset_roots": [str(p) for p in cfg.dataset_roots],
        "slots": slots,
        "active": _active_tasks(),
        "tasks": _task_ids(),
        "ts": time.time(),
        "gpus": [dict(g) for g in gpus],
        "nvml": nvml_available(),
        "cache": cache,
        "cache_bytes": sum(c["bytes"] for c in cache),
        "cache_budget_bytes": budget,
        "running": running_containers(),
    }


def start_heartbeat(cfg: HostConfig, worker_name: str, *, slots: int = 1) -> threading.Thread:
    """Send a HostReport now and every ``cfg.heartbeat_s`` seconds, from a daemon thread."""

    def loop() -> None:
        from worker import containers, events

        while True:
            try:
                # A pool child killed mid-container leaves its container behind; remove it
                # here rather than only at the next start of this worker.
                if containers.sweep_orphans(cfg.hostname):
                    logger.warning("removed container(s) of a pool process that died")
                report = collect(cfg, worker_name, slots=slots)
                events.send_heartbeat(report)
            except Exception:  # a missed beat shows as a silent host, not a dead worker
                logger.warning("heartbeat failed", exc_info=True)
            time.sleep(cfg.heartbeat_s)

    thread = threading.Thread(target=loop, name="hyperbench-heartbeat", daemon=True)
    thread.start()
    logger.info("heartbeat every %ss from pid %s", cfg.heartbeat_s, os.getpid())
    return thread
