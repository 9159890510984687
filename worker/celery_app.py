"""The host worker's Celery app. No Django: never set DJANGO_SETTINGS_MODULE here,
Celery turns its Django fix-up on from that variable alone."""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, celeryd_init, worker_ready
from kombu import Exchange, Queue

from worker import brokertls, contract
from worker.config import load

logger = logging.getLogger(__name__)

_cfg = load()
# A rediss:// broker always verifies the server's certificate (worker/brokertls.py). A setting
# that is wrong is kept here and refused at worker start (_check_broker) with its name, never
# turned into an unverified connection: until then the app falls back to the system CA store.
_broker_problem: brokertls.BrokerConfigError | None = None
try:
    _broker_ssl = brokertls.ssl_options(
        _cfg.broker_url,
        ca_file=_cfg.broker_ca_file,
        cert_file=_cfg.broker_cert_file,
        key_file=_cfg.broker_key_file,
    )
except brokertls.BrokerConfigError as e:
    _broker_problem = e
    _broker_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
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
    broker_use_ssl=_broker_ssl,
    # No x-expires on this worker's remote-control (pidbox) queue: with one, kombu keeps its
    # binding alive with Lua scripts that also sweep *every* overdue binding table, which a
    # remote host's Redis ACL user may not touch. Broadcasts travel by pub/sub either way.
    control_queue_expires=None,
    task_default_queue=contract.Queue.CPU,
    worker_hijack_root_logger=True,
)
# A host only sends to `control` (events, heartbeats); the control side declares and consumes
# it. Declaring it here would need read access to that queue, which a remote host's Redis ACL
# user does not get (it could then take other hosts' events off it).
app.conf.task_queues = (
    Queue(
        contract.Queue.CONTROL,
        Exchange(contract.Queue.CONTROL),
        routing_key=contract.Queue.CONTROL,
        no_declare=True,
    ),
)
app.conf.imports = ("worker.tasks", "worker.hostctl")


@celeryd_init.connect
def _check_broker(**_: Any) -> None:
    """Refuse to start on broker settings that cannot work (a CA that does not verify the
    broker, a refused user or password, a plain port): one clear line naming the setting,
    not Celery's endless reconnect loop. An unreachable broker is left to Celery's retries."""
    try:
        if _broker_problem is not None:
            raise _broker_problem
        brokertls.check(_cfg.broker_url, _broker_ssl)
    except brokertls.BrokerConfigError as e:
        print(f"hyperbench host worker: refusing to start: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e


@celeryd_after_setup.connect
def _own_queue(sender: str, instance: Any, **_: Any) -> None:
    """Every host worker also consumes its host's own queue (``host.<hostname>``), whatever -Q says."""
    queue = contract.host_queue(_cfg.hostname)
    instance.app.amqp.queues.select_add(queue)
    logger.info("host %s (instance %s) also consumes %s", _cfg.hostname, _cfg.instance, queue)


@worker_ready.connect
def _on_ready(sender: Any = None, **_: Any) -> None:
    from worker import containers, hostctl, telemetry
    from worker.errors import HostError
    from worker.nodecache import NodeCache

    cfg = load()
    n = containers.sweep_orphans(cfg.hostname)
    if n:
        logger.warning("removed %d container(s) left behind by a dead worker", n)
    hostctl.prune_markers(cfg)
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
    telemetry.start_heartbeat(
        cfg,
        getattr(sender, "hostname", "") or _cfg.hostname,
        slots=int(getattr(sender, "concurrency", 1) or 1),
    )
