"""What the control side sends to the host workers, and how it takes it back.

Every host message has a deterministic task id (``contract.shard_task_id``,
``contract.stage_task_id``), so a cancel or a superseded attempt is revoked by
id: a worker that receives a revoked message discards it. A cancel also
broadcasts ``contract.CONTROL_STOP_RUN`` to every host worker, whose main
process stops the run's containers at once (``worker/hostctl.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

from celery import Celery

from apps.hosts.models import Host
from worker import contract

logger = logging.getLogger(__name__)


def _celery() -> Celery:
    from hyperbench_web.celery import app

    return app


def send(task: str, payload: dict[str, Any], queue: str, *, task_id: str | None = None) -> None:
    # By name: the web side never imports the host worker's task code.
    _celery().send_task(task, args=[payload], queue=queue, task_id=task_id)


def send_shard(spec: dict[str, Any], shard: int, attempt: int, queue: str | None = None) -> None:
    payload: contract.ShardTask = {"spec": spec, "shard": shard, "attempt": attempt}  # type: ignore[typeddict-item]
    send(
        contract.TASK_INFER_SHARD,
        dict(payload),
        queue or shard_queue(spec),
        task_id=contract.shard_task_id(spec["run_id"], shard, attempt),
    )


def shard_queue(spec: dict[str, Any]) -> str:
    return contract.Queue.GPU if spec.get("model", {}).get("requires_gpu") else contract.Queue.CPU


class Unservable(Exception):
    """No live host can read the run's dataset; the message says which hosts there are."""


def _serves(host: Host, uri: str) -> bool:
    """Whether ``host`` can mount the dataset at ``uri``: an s3:// one any host syncs; a file://
    one only a host that declared a dataset root holding its directory."""
    if not uri.startswith("file://"):
        return True
    path = PurePosixPath(unquote(urlparse(uri).path))
    return any(path.is_relative_to(PurePosixPath(root)) for root in host.dataset_roots or [])


def placement(spec: dict[str, Any], shards: Iterable[int], *, avoid: Iterable[str] = ()) -> dict[int, str]:
    """The queue of each shard: spread over the live hosts that can read the dataset, least busy first.

    A CPU shard goes to a host's own queue (``host.<name>``), so a k-shard run
    on k idle hosts runs on k hosts, and a ``file://`` dataset only reaches hosts
    that have its directory. A GPU shard stays on the shared ``gpu`` queue (it
    waits there for whichever host frees a GPU first). With no live host known
    yet (a cluster starting), shards wait on the shared queue.

    Raises:
        Unservable: live hosts exist and none of them can read the dataset.
    """
    wanted = list(shards)
    uri = str(spec.get("dataset", {}).get("uri", ""))
    has_s3 = bool(spec.get("dataset", {}).get("s3_uri"))  # a second source in S3: every host can sync it
    live = [h for h in Host.objects.all() if not h.silent]
    able = [h for h in live if has_s3 or _serves(h, uri)]
    if live and not able:
        names = ", ".join(f"{h.name} ({', '.join(h.dataset_roots) or 'no dataset roots'})" for h in live)
        raise Unservable(
            f"No live host can read {uri}: its directory is under none of their dataset roots "
            f"({names}). Put the dataset on a host's HYPERBENCH_DATASET_ROOTS, or register it from S3."
        )
    if not able or spec.get("model", {}).get("requires_gpu"):
        return {k: shard_queue(spec) for k in wanted}
    avoid = set(avoid)
    able = [h for h in able if h.name not in avoid] or able
    able.sort(key=lambda h: (h.active / max(h.slots, 1), h.name))
    return {
        k: h.queue or contract.host_queue(h.name)
        for k, h in zip(wanted, _cycle(able, len(wanted)), strict=True)
    }


def _cycle(hosts: list[Host], n: int) -> list[Host]:
    return [hosts[i % len(hosts)] for i in range(n)]


def revoke(task_ids: list[str]) -> None:
    """Tell every worker to discard these messages when they arrive (they keep the ids on disk:
    ``--statedb``). A message already being worked on is stopped by ``stop_run`` instead."""
    if not task_ids:
        return
    try:
        _celery().control.revoke(task_ids)
    except Exception:  # the hosts' own cancel check still holds the line
        logger.warning("could not revoke %d task(s)", len(task_ids), exc_info=True)


def cancel(task_ids: list[str], run_id: int) -> None:
    revoke(task_ids)
    stop_run(run_id)


def resend_shard(superseded: str, spec: dict[str, Any], shard: int, attempt: int, queue: str) -> None:
    revoke([superseded])
    send_shard(spec, shard, attempt, queue)


def stop_run(run_id: int) -> None:
    """Ask every host worker to stop the run's containers now (served by their main process)."""
    try:
        _celery().control.broadcast(contract.CONTROL_STOP_RUN, arguments={"run_id": int(run_id)})
    except Exception:  # the reconciler sends it again while containers remain
        logger.warning("could not broadcast the stop of run %s", run_id, exc_info=True)
