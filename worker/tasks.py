"""Host tasks: inference shards, evaluation and report, each in its own container.

Every task is idempotent (a re-delivered message finds the published output
and only re-announces it) and fenced on this host (a lock per run and shard,
so at most one container runs for a shard at any moment). Failures become a
``failed`` event with a reason a person can act on; the worker keeps serving.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from celery import Task
from filelock import FileLock, Timeout

from worker import containers, contract, events
from worker.celery_app import app
from worker.config import HostConfig, load
from worker.datasync import dataset_lease
from worker.errors import HostError
from worker.gpus import GpuAllocator, GpuInfo, GpuLease, list_gpus
from worker.manifest import iter_samples
from worker.nodecache import SyncProgress
from worker.storage import Artifacts, artifacts_from_config, uri_join

logger = logging.getLogger(__name__)

CONTAINER_UID = 10001
MAX_TRANSIENT_RETRIES = 3
_INPUT_KEYS = ("id", "image", "question")  # ground truth never enters the model's container


def _config() -> HostConfig:
    return load()


@contextmanager
def _job_dir(cfg: HostConfig, name: str) -> Iterator[Path]:
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
def _fence(cfg: HostConfig, name: str) -> Iterator[None]:
    lock_dir = cfg.work_dir / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout as e:
        raise _AlreadyRunning(name) from e
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _held(lease: GpuLease | None) -> Iterator[GpuLease | None]:
    try:
        yield lease
    finally:
        if lease is not None:
            lease.release()


class _AlreadyRunning(Exception):
    pass


class _NoFreeGpu(Exception):
    """Not enough free GPUs on this host right now: the shard goes back to the queue."""

    def __init__(self, wanted: int, present: int) -> None:
        super().__init__(
            f"needs {wanted} free GPU(s); this host has {present} GPU(s), not enough of them free"
        )
        self.wanted, self.present = wanted, present


def _limits(spec: contract.RunSpec) -> dict[str, Any]:
    lim = spec["limits"]
    return {
        "timeout_s": lim["timeout_s"],
        "memory_mb": lim["memory_mb"],
        "cpus": lim["cpus"],
        "pids": lim["pids"],
    }


def _guard(
    stage: str,
    run_id: int,
    shard: int | None,
    body: Callable[[], None],
    task: Task,
    attempt: int | None = None,
) -> None:
    """Run a stage; turn every failure into a ``failed`` event (or a bounded retry).

    The event names the shard's attempt, so the control side ignores the failure of
    an attempt it has already superseded (a host that was cut off and came back).
    """
    try:
        body()
    except _AlreadyRunning:
        logger.info("run %s %s: already running on this host, skipping the duplicate delivery", run_id, stage)
    except _NoFreeGpu as e:
        _requeue_for_gpu(task, run_id, shard, e)
    except HostError as e:
        if not e.permanent and task.request.retries < MAX_TRANSIENT_RETRIES:
            logger.warning("run %s %s: transient error, retrying: %s", run_id, stage, e)
            raise task.retry(countdown=2 ** (task.request.retries + 1), exc=e) from e
        events.emit(run_id, "failed", stage, shard=shard, attempt=attempt, reason=str(e))
    except Exception as e:  # noqa: BLE001 - a bug must fail the run visibly, not vanish in a log
        logger.exception("run %s %s: unexpected error", run_id, stage)
        events.emit(
            run_id,
            "failed",
            stage,
            shard=shard,
            attempt=attempt,
            reason=f"internal error in the host worker ({type(e).__name__}: {e}); see the worker log.",
            data={"traceback": traceback.format_exc()[-4000:]},
        )


def _requeue_for_gpu(task: Task, run_id: int, shard: int | None, e: _NoFreeGpu) -> None:
    """Put the shard back on its queue to wait for a GPU, for at most gpu_wait_s; never oversubscribe."""
    payload = dict(task.request.args[0])
    since = float(payload.setdefault("gpu_wait_since", time.time()))
    waited = time.time() - since
    if waited > _config().gpu_wait_s:
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
    raise task.retry(args=[payload], countdown=_config().gpu_retry_s, max_retries=None)


def _take_gpus(
    cfg: HostConfig, model: contract.ModelRef, reader: Callable[[], list[GpuInfo]] = list_gpus
) -> GpuLease | None:
    """Lease the GPUs a model needs on this host, or raise _NoFreeGpu.

    ``reader`` is the NVML seam: tests pass a fake; production reads NVML.
    """
    if not model["requires_gpu"]:
        return None
    wanted = max(1, int(model["gpus"]))
    allocator = GpuAllocator(cfg.work_dir / "gpu-locks", reader=reader)
    lease = allocator.acquire(wanted, max_memory_used_fraction=cfg.gpu_max_memory_used_fraction)
    if lease is None:
        raise _NoFreeGpu(wanted, len(reader()))
    return lease


def _endpoint_mount(cfg: HostConfig, model: contract.ModelRef, job: Path) -> list[containers.BindMount]:
    """For an API model: /job/endpoint.json with the host's key, readable by the container user only.

    The key comes from this host's environment (named by the registered model),
    never from a message, and never goes into the container's environment, where
    ``docker inspect`` would show it.
    """
    endpoint = model.get("endpoint")
    if not endpoint:
        return []
    host = urlparse(endpoint["base_url"]).hostname or ""
    if cfg.api_endpoint_hosts and host not in cfg.api_endpoint_hosts:
        raise HostError(
            f"Model {model['name']} calls {host}, which is not in this host's HYPERBENCH_API_ENDPOINT_HOSTS "
            f"({', '.join(cfg.api_endpoint_hosts)}); an operator must allow it."
        )
    key = ""
    if endpoint["api_key_env"]:
        key = os.environ.get(endpoint["api_key_env"], "")
        if not key:
            raise HostError(
                f"Model {model['name']} needs its API key in ${endpoint['api_key_env']} "
                f"on host {cfg.hostname}; set it in the host worker's environment and retry."
            )
    path = job / "endpoint.json"
    path.write_text(json.dumps({**endpoint, "api_key": key}), encoding="utf-8")
    try:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
        path.chmod(0o400)
    except PermissionError:  # not root: the job dir is private to this worker anyway
        path.chmod(0o644)
    return [containers.BindMount(path, "/job/endpoint.json")]


def _sync_progress(run_id: int, shard: int | None) -> Callable[[SyncProgress], None]:
    """Node-cache sync ticks -> ``progress`` events of stage ``sync`` (counts in ``data``, not done/total,
    which stay the shard's sample counts)."""

    def tick(p: SyncProgress) -> None:
        events.emit(
            run_id,
            "progress",
            "sync",
            message=f"dataset sync: {p.files_done}/{p.files_total} files, {p.rate_bps / 1e6:.1f} MB/s",
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


def _write_shard_input(dataset_dir: Path, spec: contract.RunSpec, shard: int, job: Path) -> list[str]:
    ids: list[str] = []
    with open(job / "input.jsonl", "w", encoding="utf-8") as f:
        for index, sample in enumerate(iter_samples(dataset_dir)):
            if contract.shard_of(index, spec["shards"]) != shard:
                continue
            f.write(json.dumps({k: sample[k] for k in _INPUT_KEYS if k in sample}, ensure_ascii=False) + "\n")
            ids.append(str(sample["id"]))
    params = {"params": spec["params"], "prompt": spec["prompt"], "task": spec["dataset"]["task"]}
    (job / "params.json").write_text(json.dumps(params), encoding="utf-8")
    return ids


def _check_predictions(path: Path, ids: list[str]) -> tuple[int, int]:
    """Every sample of the shard has exactly one prediction line. Returns (count, errors)."""
    if not path.is_file():
        raise HostError("The model container exited 0 but wrote no predictions.jsonl.")
    seen: dict[str, bool] = {}
    wanted = set(ids)
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise HostError(f"predictions.jsonl line {lineno} from the model is not JSON: {e}") from e
            sid = str(row.get("id"))
            if sid not in wanted:
                raise HostError(
                    f"predictions.jsonl line {lineno} names sample {sid!r}, which is not in this shard."
                )
            if sid in seen:
                raise HostError(f"predictions.jsonl line {lineno}: a second prediction for sample {sid!r}.")
            seen[sid] = bool(row.get("error"))
    missing = [i for i in ids if i not in seen]
    if missing:
        raise HostError(
            f"The model wrote no prediction for {len(missing)} of {len(ids)} samples (first: {missing[0]!r})."
        )
    return len(seen), sum(seen.values())


def _progress_reader(run_id: int, shard: int, attempt: int, out: Path, total: int) -> Callable[[], None]:
    last: list[Any] = [None, 0.0]

    def tick() -> None:
        try:
            p = json.loads((out / "progress.json").read_text(encoding="utf-8"))
            done = int(p.get("done", 0))
        except (OSError, ValueError):
            return
        now = time.monotonic()
        if done != last[0] and (now - last[1] > 1.0 or done >= total):
            last[0], last[1] = done, now
            events.emit(run_id, "progress", "infer", shard=shard, attempt=attempt, done=done, total=total)

    return tick


def _container_spec(
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
        **_limits(spec),
    )


def _keep_log(store: Artifacts, spec: contract.RunSpec, key: str, text: str, job: Path) -> None:
    """Keep a container's log tail at ``key`` (see ``contract.log_key``) under the run's artifacts."""
    log = job / "container.log"
    log.write_text(text, encoding="utf-8")
    store.put_file(log, uri_join(spec["artifacts_uri"], key))


def _published_counts(store: Artifacts, uri: str, cfg: HostConfig) -> tuple[int, int]:
    """(predictions, errors) of a published shard attempt, read back from the store."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="published-", dir=cfg.work_dir) as tmp:
        local = store.get_file(uri, Path(tmp) / "predictions.jsonl")
        count = errors = 0
        with open(local, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    count += 1
                    errors += bool(json.loads(line).get("error"))
    return count, errors


def _keep_rejected(store: Artifacts, local: Path, uri: str) -> None:
    """Keep what a failed attempt wrote, apart from the published key; never mask the failure."""
    if not local.is_file():
        return
    try:
        store.put_file(local, uri)
    except HostError as e:
        logger.warning("could not keep the rejected predictions at %s: %s", uri, e)


def _raise_unless_ok(what: str, result: containers.ContainerResult, spec: contract.RunSpec) -> None:
    if result.exit_code != 0 or result.timed_out:
        limits = spec["limits"]
        raise HostError(containers.describe_failure(what, result, limits["timeout_s"], limits["memory_mb"]))


# max_retries=None: waiting for a GPU re-queues the shard many times (bounded by
# gpu_wait_s); transient errors are bounded by MAX_TRANSIENT_RETRIES in _guard.
def _run_system_stage(
    spec: contract.RunSpec,
    cfg: HostConfig,
    store: Any,
    job: Path,
    *,
    stage: Literal["evaluate", "report"],
    attempt: int,
    inputs: list[containers.BindMount],
) -> None:
    """Run the eval or report image of a run on ``inputs`` (read-only) and ``job/output``; keep its log.

    Raises:
        HostError: the container failed (its reason names the image and the log tail).
    """
    img = spec["eval_image"] if stage == "evaluate" else spec["report_image"]
    cspec = _container_spec(
        spec,
        cfg,
        image=img["image"],
        digest=img["digest"],
        labels={"org.hyperbench.run": str(spec["run_id"]), "org.hyperbench.stage": stage},
        mounts=[*inputs, containers.BindMount(job / "output", "/job/output", read_only=False)],
    )
    result = containers.run(cspec)
    _keep_log(store, spec, contract.log_key(stage, attempt), result.log_tail, job)
    what = "Eval" if stage == "evaluate" else "Report"
    _raise_unless_ok(f"{what} container {img['image']}", result, spec)


@app.task(
    name=contract.TASK_INFER_SHARD, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def infer_shard(self: Task, payload: contract.ShardTask) -> None:
    spec, shard, attempt = payload["spec"], int(payload["shard"]), int(payload["attempt"])
    run_id = spec["run_id"]
    _guard("infer", run_id, shard, lambda: _infer(spec, shard, attempt), self, attempt=attempt)


def _infer(spec: contract.RunSpec, shard: int, attempt: int) -> None:
    cfg = _config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    base = spec["artifacts_uri"]
    # Keyed by attempt: a retried shard never overwrites, or mixes with, an earlier attempt's
    # output, and only this attempt's complete, validated predictions are ever published here.
    published = uri_join(base, contract.shard_predictions_key(shard, attempt))
    with _fence(cfg, f"run-{run_id}-shard-{shard}"), ExitStack() as held:
        if store.exists(published):
            # A re-delivery of an attempt that already finished: announce, do not redo.
            count, errors = _published_counts(store, published, cfg)
            events.emit(
                run_id,
                "shard_succeeded",
                "infer",
                shard=shard,
                attempt=attempt,
                data={
                    "predictions_uri": published,
                    "attempt": attempt,
                    "count": count,
                    "errors": errors,
                    "redelivered": True,
                },
            )
            return
        model = spec["model"]
        # GPUs first: a shard that waits for one stays queued, and holds nothing else meanwhile.
        gpu_lease = held.enter_context(_held(_take_gpus(cfg, model)))
        events.emit(run_id, "started", "infer", shard=shard, attempt=attempt)
        # Held until the container is gone: eviction never removes a cached version in use.
        sync_started = time.monotonic()
        dataset_dir = held.enter_context(
            dataset_lease(spec["dataset"], cfg, on_progress=_sync_progress(run_id, shard))
        )
        sync_s = time.monotonic() - sync_started  # node-cache sync (or local check) of this shard
        with _job_dir(cfg, f"run{run_id}-s{shard}-a{attempt}") as job:
            ids = _write_shard_input(dataset_dir, spec, shard, job)
            out = job / "output"
            labels = {
                "org.hyperbench.run": str(run_id),
                "org.hyperbench.shard": str(shard),
                "org.hyperbench.attempt": str(attempt),
                "org.hyperbench.stage": "infer",
            }
            cspec = _container_spec(
                spec,
                cfg,
                image=model["image"],
                digest=model["digest"],
                labels=labels,
                network=model["network"],
                gpu_ids=[str(i) for i in gpu_lease.indices] if gpu_lease else [],
                mounts=[
                    containers.BindMount(dataset_dir, "/data"),
                    containers.BindMount(job / "input.jsonl", "/job/input.jsonl"),
                    containers.BindMount(job / "params.json", "/job/params.json"),
                    containers.BindMount(out, "/job/output", read_only=False),
                    *_endpoint_mount(cfg, model, job),
                ],
            )
            result = containers.run(cspec, on_tick=_progress_reader(run_id, shard, attempt, out, len(ids)))
            _keep_log(store, spec, contract.log_key("infer", attempt, shard), result.log_tail, job)
            raw = out / "predictions.jsonl"
            try:
                _raise_unless_ok(f"Model container {model['image']}", result, spec)
                count, errors = _check_predictions(raw, ids)
            except HostError:
                _keep_rejected(store, raw, uri_join(base, contract.shard_rejected_key(shard, attempt)))
                raise
            store.put_file(raw, published)
        events.emit(
            run_id,
            "shard_succeeded",
            "infer",
            shard=shard,
            attempt=attempt,
            data={
                "predictions_uri": published,
                "attempt": attempt,
                "count": count,
                "errors": errors,
                "image_digest": result.image_id,
                "duration_s": round(result.duration_s, 3),
                "sync_s": round(sync_s, 3),
            },
        )


@app.task(name=contract.TASK_EVALUATE, bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate(self: Task, payload: dict[str, Any]) -> None:
    spec: contract.RunSpec = payload["spec"]
    attempt = self.request.retries + 1
    _guard(
        "evaluate",
        spec["run_id"],
        None,
        lambda: _evaluate(spec, list(payload["predictions"]), attempt=attempt),
        self,
    )


def _ends_with_newline(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _accepted_shard_uris(spec: contract.RunSpec, shard_uris: list[str]) -> list[str]:
    """The shard predictions the control side accepted: one per shard, all under this run's artifacts."""
    if len(shard_uris) != spec["shards"]:
        raise HostError(
            f"Evaluation got {len(shard_uris)} shard predictions for a run of {spec['shards']} shards."
        )
    base = spec["artifacts_uri"].rstrip("/") + "/"
    for k, uri in enumerate(shard_uris):
        if not uri or not uri.startswith(base):
            raise HostError(f"Shard {k} has no accepted predictions under {base} (got {uri!r}).")
    return shard_uris


def _evaluate(spec: contract.RunSpec, shard_uris: list[str], *, attempt: int = 1) -> None:
    cfg = _config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    # Exactly the attempts the control side recorded, never "whatever is in the shard's folder".
    shard_uris = _accepted_shard_uris(spec, shard_uris)
    events.emit(run_id, "started", "evaluate")
    with (
        dataset_lease(spec["dataset"], cfg, on_progress=_sync_progress(run_id, None)) as dataset_dir,
        _fence(cfg, f"run-{run_id}-evaluate"),
        _job_dir(cfg, f"run{run_id}-eval") as job,
    ):
        merged = job / "predictions.jsonl"
        part = job / "shard.jsonl"
        with open(merged, "wb") as f:
            for uri in shard_uris:
                store.get_file(uri, part)
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, f)
                if not _ends_with_newline(part):
                    f.write(b"\n")  # a shard without a final newline must not glue onto the next
                part.unlink()
        merged.chmod(0o644)
        inputs = [
            containers.BindMount(dataset_dir, "/data"),
            containers.BindMount(merged, "/job/predictions.jsonl"),
        ]
        _run_system_stage(spec, cfg, store, job, stage="evaluate", attempt=attempt, inputs=inputs)
        metrics_path = job / "output" / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise HostError(f"The eval container wrote no readable metrics.json: {e}") from e
        uris = {
            "predictions_uri": store.put_file(merged, uri_join(spec["artifacts_uri"], "predictions.jsonl")),
            "metrics_uri": store.put_file(metrics_path, uri_join(spec["artifacts_uri"], "metrics.json")),
            "per_sample_uri": store.put_file(
                job / "output" / "per_sample.jsonl", uri_join(spec["artifacts_uri"], "per_sample.jsonl")
            ),
        }
    events.emit(run_id, "evaluated", "evaluate", data={"metrics": metrics, **uris})


@app.task(name=contract.TASK_REPORT, bind=True, acks_late=True, reject_on_worker_lost=True)
def report(self: Task, payload: dict[str, Any]) -> None:
    spec: contract.RunSpec = payload["spec"]
    attempt = self.request.retries + 1
    _guard("report", spec["run_id"], None, lambda: _report(spec, payload, attempt=attempt), self)


def _report(spec: contract.RunSpec, payload: dict[str, Any], *, attempt: int = 1) -> None:
    cfg = _config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    events.emit(run_id, "started", "report")
    with (
        dataset_lease(spec["dataset"], cfg, on_progress=_sync_progress(run_id, None)) as dataset_dir,
        _fence(cfg, f"run-{run_id}-report"),
        _job_dir(cfg, f"run{run_id}-report") as job,
    ):
        inp = job / "input"
        inp.mkdir()
        store.get_file(payload["metrics_uri"], inp / "metrics.json")
        store.get_file(payload["per_sample_uri"], inp / "per_sample.jsonl")
        store.get_file(payload["predictions_uri"], inp / "predictions.jsonl")
        (inp / "run.json").write_text(json.dumps(payload.get("run_facts", {})), encoding="utf-8")
        for p in inp.iterdir():
            p.chmod(0o644)
        inputs = [containers.BindMount(dataset_dir, "/data"), containers.BindMount(inp, "/job/input")]
        _run_system_stage(spec, cfg, store, job, stage="report", attempt=attempt, inputs=inputs)
        html = job / "output" / "report.html"
        if not html.is_file():
            raise HostError("The report container exited 0 but wrote no report.html.")
        uri = store.put_file(html, uri_join(spec["artifacts_uri"], "report.html"))
    events.emit(run_id, "reported", "report", data={"report_uri": uri})


@app.task(name=contract.TASK_COMPARE, bind=True, acks_late=True, reject_on_worker_lost=True)
def compare(self: Task, payload: contract.CompareTask) -> None:
    """Render a comparison report of several runs on one dataset version."""
    cid = int(payload["comparison_id"])
    host = _config().hostname
    try:
        uri = _compare(payload)
    except HostError as e:
        if not e.permanent and self.request.retries < MAX_TRANSIENT_RETRIES:
            raise self.retry(countdown=2 ** (self.request.retries + 1), exc=e) from e
        result: contract.ComparisonResult = {
            "comparison_id": cid,
            "ok": False,
            "host": host,
            "reason": str(e),
        }
    except Exception as e:  # noqa: BLE001 - a bug must fail the comparison visibly
        logger.exception("comparison %s: unexpected error", cid)
        result = {
            "comparison_id": cid,
            "ok": False,
            "host": host,
            "reason": f"internal error in the host worker ({type(e).__name__}: {e}); see the worker log.",
        }
    else:
        result = {"comparison_id": cid, "ok": True, "host": host, "report_uri": uri}
    app.send_task(contract.TASK_RECORD_COMPARISON, args=[result], queue=contract.Queue.CONTROL)


def _compare(payload: contract.CompareTask) -> str:
    cfg = _config()
    cid = payload["comparison_id"]
    store = artifacts_from_config(cfg)
    with (
        dataset_lease(payload["dataset"], cfg) as dataset_dir,
        _fence(cfg, f"comparison-{cid}"),
        _job_dir(cfg, f"cmp{cid}") as job,
    ):
        runs_dir = job / "input" / "runs"
        for k, run in enumerate(payload["runs"]):
            d = runs_dir / str(k)
            d.mkdir(parents=True)
            store.get_file(run["metrics_uri"], d / "metrics.json")
            store.get_file(run["per_sample_uri"], d / "per_sample.jsonl")
            store.get_file(run["predictions_uri"], d / "predictions.jsonl")
            (d / "run.json").write_text(
                json.dumps({"run_id": run["run_id"], **run["facts"]}), encoding="utf-8"
            )
        for p in (job / "input").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (job / "input").chmod(0o755)
        img, lim = payload["report_image"], payload["limits"]
        result = containers.run(
            containers.ContainerSpec(
                image=img["image"],
                digest=img["digest"],
                user=cfg.container_user,
                tmpfs_mb=cfg.tmpfs_mb,
                labels={"org.hyperbench.comparison": str(cid), "org.hyperbench.stage": "compare"},
                mounts=[
                    containers.BindMount(dataset_dir, "/data"),
                    containers.BindMount(job / "input", "/job/input"),
                    containers.BindMount(job / "output", "/job/output", read_only=False),
                ],
                timeout_s=lim["timeout_s"],
                memory_mb=lim["memory_mb"],
                cpus=lim["cpus"],
                pids=lim["pids"],
            )
        )
        log = job / "container.log"
        log.write_text(result.log_tail, encoding="utf-8")
        store.put_file(log, uri_join(payload["artifacts_uri"], "compare.log"))
        if result.exit_code != 0 or result.timed_out:
            raise HostError(
                containers.describe_failure(
                    f"Report container {img['image']} (comparison)",
                    result,
                    lim["timeout_s"],
                    lim["memory_mb"],
                )
            )
        html = job / "output" / "report.html"
        if not html.is_file():
            raise HostError("The report container exited 0 but wrote no comparison report.html.")
        return store.put_file(html, uri_join(payload["artifacts_uri"], "report.html"))
