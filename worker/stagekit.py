"""What every host stage shares: the job directory, the fences, the GPU lease, the failure guard,
publishing through the spool, and running a system image (evaluate, report).

The stages themselves live in :mod:`worker.inference` (a shard) and :mod:`worker.systemstages`
(evaluate, report, compare); :mod:`worker.tasks` holds only their Celery entry points.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from celery import Task
from filelock import FileLock, Timeout

from worker import containers, contract, events, hostctl
from worker.config import HostConfig, load
from worker.errors import HostError
from worker.gpus import GpuAllocator, GpuInfo, GpuLease, list_gpus
from worker.nodecache import SyncProgress
from worker.publish import publish
from worker.storage import Artifacts, uri_join

logger = logging.getLogger(__name__)

CONTAINER_UID = 10001
MAX_TRANSIENT_RETRIES = 3


def config() -> HostConfig:
    """This host's settings, read at each task (a restart is not needed to pick up a change)."""
    return load()


@contextmanager
def job_dir(cfg: HostConfig, name: str) -> Iterator[Path]:
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=cfg.work_dir))
    path.chmod(0o755)
    out = path / "output"
    out.mkdir()
    try:
        os.chown(out, CONTAINER_UID, CONTAINER_UID)
    except PermissionError:  # a worker not running as root: let the container user write anyway
        out.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def fence(cfg: HostConfig, name: str) -> Iterator[None]:
    lock_dir = cfg.work_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise AlreadyRunning(name) from e
    try:
        yield
    finally:
        lock.release()


@contextmanager
def held_gpus(lease: GpuLease | None) -> Iterator[GpuLease | None]:
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


class AlreadyRunning(Exception):
    pass


class Cancelled(Exception):
    """The run was cancelled: this host stopped (or never started) the stage's container."""


class NoFreeGpu(Exception):
    """Not enough free GPUs on this host right now: the shard goes back to the queue."""

    def __init__(self, wanted: int, present: int) -> None:
        super().__init__(
            f"needs {wanted} free GPU(s); this host has {present} GPU(s), not enough of them free"
        )
        self.wanted, self.present = wanted, present


def limits(spec: contract.RunSpec) -> dict[str, Any]:
    lim = spec["limits"]
    return {
        "timeout_s": lim["timeout_s"],
        "memory_mb": lim["memory_mb"],
        "cpus": lim["cpus"],
        "pids": lim["pids"],
    }


def guard(
    stage: str,
    run_id: int,
    shard: int | None,
    body: Callable[[], None],
    task: Task,
    attempt: int | None = None,
    tag: dict[str, Any] | None = None,
) -> None:
    """Run a stage; turn every failure into a ``failed`` event (or a bounded retry).

    The event names the shard's attempt, so the control side ignores the failure of
    an attempt it has already superseded (a host that was cut off and came back).
    ``tag`` goes into the ``data`` of the events sent here (a rescore names its evaluation).
    """
    try:
        body()
    except AlreadyRunning:
        logger.info("run %s %s: already running on this host, skipping the duplicate delivery", run_id, stage)
    except Cancelled:
        logger.info("run %s %s: cancelled; its container is stopped", run_id, stage)
        events.emit(
            run_id,
            "cancelled",
            stage,
            shard=shard,
            attempt=attempt,
            message="stopped: run cancelled",
            data=tag,
        )
    except NoFreeGpu as e:
        requeue_for_gpu(task, run_id, shard, e)
    except HostError as e:
        # Its own budget: the GPU waits above re-queue the same task many times, and must not use it up.
        payload = dict(task.request.args[0])
        tries = int(payload.get("transient_tries", 0))
        if not e.permanent and tries < MAX_TRANSIENT_RETRIES:
            countdown = 2 ** (tries + 1)
            logger.warning("run %s %s: transient error, retrying: %s", run_id, stage, e)
            # Said in the run's events too: a retried stage costs time, and its user sees why.
            events.emit(
                run_id,
                "log",
                stage,
                shard=shard,
                attempt=attempt,
                message=f"transient error, retrying in {countdown}s: {e}",
                data={**(tag or {}), "retry": tries + 1},
            )
            payload["transient_tries"] = tries + 1
            raise task.retry(args=[payload], countdown=countdown, exc=e, max_retries=None) from e
        events.emit(run_id, "failed", stage, shard=shard, attempt=attempt, reason=str(e), data=tag)
    except Exception as e:  # a bug must fail the run visibly, not vanish in a log
        logger.exception("run %s %s: unexpected error", run_id, stage)
        events.emit(
            run_id,
            "failed",
            stage,
            shard=shard,
            attempt=attempt,
            reason=f"internal error in the host worker ({type(e).__name__}: {e}); see the worker log.",
            data={**(tag or {}), "traceback": traceback.format_exc()[-4000:]},
        )


def requeue_for_gpu(task: Task, run_id: int, shard: int | None, e: NoFreeGpu) -> None:
    """Put the shard back on its queue to wait for a GPU, for at most gpu_wait_s; never oversubscribe."""
    payload = dict(task.request.args[0])
    since = float(payload.setdefault("gpu_wait_since", time.time()))
    waited = time.time() - since
    if waited > config().gpu_wait_s:
        events.emit(
            run_id,
            "failed",
            "infer",
            shard=shard,
            attempt=payload.get("attempt"),
            reason=f"No host had a free GPU for {int(waited)}s: the model {e}. "
            "Free a GPU, add a GPU host, or raise HYPERBENCH_GPU_WAIT_S on the workers.",
        )
        return
    if task.request.retries == 0:
        events.emit(run_id, "log", "infer", shard=shard, message=f"waiting for a free GPU: the model {e}")
    # Another host on the same queue may have a free GPU; this one looks again later.
    raise task.retry(args=[payload], countdown=config().gpu_retry_s, max_retries=None)


def take_gpus(
    cfg: HostConfig, model: contract.ModelRef, reader: Callable[[], list[GpuInfo]] = list_gpus
) -> GpuLease | None:
    """Lease the GPUs a model needs on this host, or raise NoFreeGpu.

    ``reader`` is the NVML seam: tests pass a fake; production reads NVML.
    """
    if not model["requires_gpu"]:
        return None
    wanted = max(1, int(model["gpus"]))
    allocator = GpuAllocator(cfg.work_dir / "gpu-locks", reader=reader)
    lease = allocator.acquire(wanted, max_memory_used_fraction=cfg.gpu_max_memory_used_fraction)
    if lease is None:
        raise NoFreeGpu(wanted, len(reader()))
    return lease


def sync_progress(run_id: int, shard: int | None) -> Callable[[SyncProgress], None]:
    """Node-cache sync ticks -> ``progress`` events of stage ``sync`` (counts in ``data``, not done/total,
    which stay the shard's sample counts)."""

    def tick(p: SyncProgress) -> None:
        if p.phase == "done" and p.fetched_files == 0:
            # A node-cache hit: nothing crossed the network, so there is no rate to report.
            message = f"dataset already in this host's cache ({p.files_total} files checked)"
        else:
            message = f"dataset sync: {p.files_done}/{p.files_total} files, {p.rate_bps / 1e6:.1f} MB/s"
        events.emit(
            run_id,
            "progress",
            "sync",
            message=message,
            data={
                "shard": shard,
                "phase": p.phase,
                "files_done": p.files_done,
                "files_total": p.files_total,
                "bytes_done": p.bytes_done,
                "bytes_total": p.bytes_total,
                "fetched_files": p.fetched_files,
                "fetched_bytes": p.fetched_bytes,
                "rate_bps": round(p.rate_bps),
            },
        )

    return tick


def container_spec(
    spec: contract.RunSpec,
    cfg: HostConfig,
    *,
    image: str,
    digest: str,
    mounts: list[containers.BindMount],
    labels: dict[str, str],
    network: bool = False,
    gpu_ids: list[str] | None = None,
) -> containers.ContainerSpec:
    return containers.ContainerSpec(
        image=image,
        digest=digest,
        mounts=mounts,
        labels=labels,
        network=network,
        gpu_ids=gpu_ids or [],
        user=cfg.container_user,
        tmpfs_mb=cfg.tmpfs_mb,
        host=cfg.hostname,
        **limits(spec),
    )


def cancel_check(cfg: HostConfig, run_id: int) -> Callable[[], bool]:
    return lambda: hostctl.is_cancelled(cfg, run_id)


def put(
    store: Artifacts,
    cfg: HostConfig,
    spec: contract.RunSpec,
    local: Path,
    key: str,
    alive: Callable[[str], None] | None = None,
    *,
    cancellable: bool = True,
) -> str:
    """Publish ``local`` at ``key`` under the run's artifacts, through the host's spool
    (worker/publish.py: an unreachable store is waited out for HYPERBENCH_UPLOAD_WINDOW_S).
    ``cancellable=False``: a cancel of the run does not stop it (a rescore of a finished run)."""
    run_id = spec["run_id"]
    return publish(
        store,
        local,
        uri_join(spec["artifacts_uri"], key),
        cfg,
        run_id=run_id,
        key=key,
        alive=alive or stage_alive(run_id, "infer"),
        stop=cancel_check(cfg, run_id) if cancellable else _never,
    )


def _never() -> bool:
    return False


def stage_alive(run_id: int, stage: str) -> Callable[[str], None]:
    def tell(error: str) -> None:
        events.emit(run_id, "log", stage, message=f"waiting for the artifact store: {error}")

    return tell


def keep_log(
    store: Artifacts,
    cfg: HostConfig,
    spec: contract.RunSpec,
    key: str,
    text: str,
    job: Path,
    alive: Callable[[str], None] | None = None,
    *,
    cancellable: bool = True,
) -> None:
    """Keep a container's log tail at ``key`` (see ``contract.log_key``) under the run's artifacts."""
    log = job / "container.log"
    log.write_text(text, encoding="utf-8")
    put(store, cfg, spec, log, key, alive, cancellable=cancellable)


def raise_unless_ok(what: str, result: containers.ContainerResult, spec: contract.RunSpec) -> None:
    if result.exit_code != 0 or result.timed_out:
        limits = spec["limits"]
        raise HostError(containers.describe_failure(what, result, limits["timeout_s"], limits["memory_mb"]))


def run_system_stage(
    spec: contract.RunSpec,
    cfg: HostConfig,
    store: Any,
    job: Path,
    *,
    stage: Literal["evaluate", "report"],
    attempt: int,
    inputs: list[containers.BindMount],
    cancellable: bool = True,
) -> None:
    """Run the eval or report image of a run on ``inputs`` (read-only) and ``job/output``; keep its log.

    ``cancellable=False`` (a rescore of a finished run): the run's cancel marker does not stop it.

    Raises:
        HostError: the container failed (its reason names the image and the log tail).
    """
    img = spec["eval_image"] if stage == "evaluate" else spec["report_image"]
    cspec = container_spec(
        spec,
        cfg,
        image=img["image"],
        digest=img["digest"],
        labels={"org.hyperbench.run": str(spec["run_id"]), "org.hyperbench.stage": stage},
        mounts=[*inputs, containers.BindMount(job / "output", "/job/output", read_only=False)],
    )
    result = containers.run(cspec, should_stop=cancel_check(cfg, spec["run_id"]) if cancellable else _never)
    if result.cancelled:
        raise Cancelled
    keep_log(
        store,
        cfg,
        spec,
        contract.log_key(stage, attempt),
        result.log_tail,
        job,
        stage_alive(spec["run_id"], stage),
        cancellable=cancellable,
    )
    what = "Eval" if stage == "evaluate" else "Report"
    raise_unless_ok(f"{what} container {img['image']}", result, spec)
