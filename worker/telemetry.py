"""Host telemetry: GPUs (NVML), the node cache and the containers running here.

Every host worker sends a ``HostReport`` to the control queue every
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
from worker.gpus import list_gpus

logger = logging.getLogger(__name__)


def cached_versions(cache_dir: Path) -> list[contract.CachedDataset]:
    """Complete dataset versions under ``<cache>/datasets/<name>/<manifest-sha>/``."""
    out: list[contract.CachedDataset] = []
    root = cache_dir / "datasets"
    if not root.is_dir():
        return out
    for marker in root.glob("*/*/.complete"):
        version_dir = marker.parent
        try:
            info = json.loads(marker.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            info = {}
        size = info.get("bytes", info.get("total_bytes"))
        if not isinstance(size, int):
            size = sum(p.stat().st_size for p in version_dir.rglob("*") if p.is_file())
        last_used_file = version_dir.parent / f".{version_dir.name}.last_used"
        last_used = (last_used_file if last_used_file.exists() else marker).stat().st_mtime
        out.append(
            {
                "name": str(info.get("name", version_dir.parent.name)),
                "version": str(info.get("version", "")),
                "manifest_sha256": version_dir.name,
                "bytes": int(size),
                "last_used": last_used,
                "in_use": any(version_dir.parent.glob(f".{version_dir.name}.lease*")),
            }
        )
    return out


def running_containers() -> list[contract.RunningContainer]:
    from worker import containers

    try:
        found = containers.client().containers.list(filters={"label": containers.MANAGED_LABEL})
    except Exception:  # noqa: BLE001 - telemetry must never take the worker down
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


def collect(cfg: HostConfig, worker_name: str, *, cache_budget_bytes: int = 0) -> contract.HostReport:
    gpus = list_gpus()
    cache = cached_versions(cfg.cache_dir)
    return {
        "host": cfg.hostname,
        "worker": worker_name,
        "ts": time.time(),
        "gpus": [dict(g) for g in gpus],
        "nvml": bool(gpus),
        "cache": cache,
        "cache_bytes": sum(c["bytes"] for c in cache),
        "cache_budget_bytes": cache_budget_bytes,
        "running": running_containers(),
    }


def start_heartbeat(cfg: HostConfig, worker_name: str) -> threading.Thread:
    """Send a HostReport now and every ``cfg.heartbeat_s`` seconds, from a daemon thread."""
    from worker.celery_app import app

    def loop() -> None:
        while True:
            try:
                report = collect(cfg, worker_name)
                app.send_task(contract.TASK_HOST_HEARTBEAT, args=[report], queue=contract.Queue.CONTROL)
            except Exception:  # noqa: BLE001 - a missed beat shows as a silent host, not a dead worker
                logger.warning("heartbeat failed", exc_info=True)
            time.sleep(cfg.heartbeat_s)

    thread = threading.Thread(target=loop, name="hyperbench-heartbeat", daemon=True)
    thread.start()
    logger.info("heartbeat every %ss from pid %s", cfg.heartbeat_s, os.getpid())
    return thread
