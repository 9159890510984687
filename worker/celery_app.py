"""The host worker's Celery app. No Django: never set DJANGO_SETTINGS_MODULE here,
Celery turns its Django fix-up on from that variable alone."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from worker import contract
from worker.config import load

logger = logging.getLogger(__name__)

_cfg = load()
app = Celery("hyperbench_worker", broker=_cfg.broker_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # Long GPU tasks: take one message at a time, acknowledge it only when done,
    # and give it back to the queue if the worker dies mid-task.
    worker_prefetch_multiplier=1,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # Redis re-delivers an unacknowledged message after the visibility timeout: it
    # must exceed the longest shard (see hyperbench_web/settings.py for the policy).
    broker_transport_options={"visibility_timeout": _cfg.visibility_timeout_s},
    broker_connection_retry_on_startup=True,
    task_default_queue=contract.Queue.CPU,
    worker_hijack_root_logger=True,
)
app.conf.imports = ("worker.tasks",)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from worker import containers, telemetry
    from worker.errors import HostError
    from worker.nodecache import NodeCache

    n = containers.sweep_orphans()
    if n:
        logger.warning("removed %d container(s) left behind by a dead worker", n)
    cfg = load()
    # Half-finished downloads of a sync killed with the last worker. Only S3 datasets are
    # synced, so a host without S3 credentials has none (from_config refuses it).
    if cfg.s3_access_key_id and cfg.s3_secret_access_key:
        try:
            n = NodeCache.from_config(cfg).cleanup_stale()
        except (HostError, OSError) as e:  # a cache that cannot be cleaned must not stop the worker
            logger.warning("could not clean the node cache's staging area: %s", e)
        else:
            if n:
                logger.warning("removed %d half-finished dataset download(s) left by a killed sync", n)
    telemetry.start_heartbeat(cfg, getattr(sender, "hostname", "") or _cfg.hostname)
