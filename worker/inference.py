"""One inference shard on this host: its GPUs, its part of the dataset, its container, its checked output."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from worker import containers, contract, events, hostctl, predcache, stagekit
from worker.config import HostConfig
from worker.datasync import dataset_lease
from worker.errors import HostError
from worker.gpus import GpuLease
from worker.manifest import iter_samples
from worker.nodecache import Selection
from worker.storage import Artifacts, artifacts_from_config, uri_join

logger = logging.getLogger(__name__)

_INPUT_KEYS = ("id", "image", "question")  # ground truth never enters the model's container


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
        os.chown(path, stagekit.CONTAINER_UID, stagekit.CONTAINER_UID)
        path.chmod(0o400)
    except PermissionError:  # not root: the job dir is private to this worker anyway
        path.chmod(0o644)
    return [containers.BindMount(path, "/job/endpoint.json")]


def _shard_samples(dataset_dir: Path, spec: contract.RunSpec, shard: int) -> list[dict[str, Any]]:
    """The shard's samples, in manifest order (ground truth included: it stays on the host)."""
    return [
        sample
        for index, sample in enumerate(iter_samples(dataset_dir))
        if contract.shard_of(index, spec["shards"]) == shard
    ]


def _write_shard_input(samples: list[dict[str, Any]], spec: contract.RunSpec, job: Path) -> list[str]:
    """``input.jsonl`` of the samples to infer and ``params.json``; returns their ids."""
    ids: list[str] = []
    with open(job / "input.jsonl", "w", encoding="utf-8") as f:
        for sample in samples:
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


def _progress_reader(
    run_id: int, shard: int, attempt: int, out: Path, total: int, already: int = 0
) -> Callable[[], None]:
    """Container progress -> ``progress`` events of the whole shard (``already``: cached or resumed)."""
    last: list[Any] = [None, 0.0]

    def tick() -> None:
        try:
            p = json.loads((out / "progress.json").read_text(encoding="utf-8"))
            done = already + int(p.get("done", 0))
        except (OSError, ValueError):
            return
        now = time.monotonic()
        if done != last[0] and (now - last[1] > 1.0 or done >= total):
            last[0], last[1] = done, now
            events.emit(run_id, "progress", "infer", shard=shard, attempt=attempt, done=done, total=total)

    return tick


def _published_counts(store: Artifacts, uri: str, cfg: HostConfig) -> tuple[int, int, dict[str, int]]:
    """(predictions, errors, cache counts) of a published shard attempt, read back from the store."""
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="published-", dir=cfg.work_dir) as tmp:
        local = store.get_file(uri, Path(tmp) / "predictions.jsonl")
        count = errors = hits = resumed = 0
        with open(local, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    count += 1
                    errors += bool(row.get("error"))
                    hits += bool(row.get("cached"))
                    resumed += bool(row.get("resumed"))
    return count, errors, {"hits": hits, "resumed": resumed, "misses": count - hits - resumed}


def _keep_rejected(store: Artifacts, local: Path, uri: str) -> None:
    """Keep what a failed attempt wrote, apart from the published key; never mask the failure."""
    if not local.is_file():
        return
    try:
        store.put_file(local, uri)
    except HostError as e:
        logger.warning("could not keep the rejected predictions at %s: %s", uri, e)


def infer(spec: contract.RunSpec, shard: int, attempt: int) -> None:
    cfg = stagekit.config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    base = spec["artifacts_uri"]
    # Keyed by attempt: a retried shard never overwrites, or mixes with, an earlier attempt's
    # output, and only this attempt's complete, validated predictions are ever published here.
    published = uri_join(base, contract.shard_predictions_key(shard, attempt))
    if hostctl.is_cancelled(cfg, run_id):
        raise stagekit.Cancelled
    with stagekit.fence(cfg, f"run-{run_id}-shard-{shard}"), ExitStack() as held:
        # We hold the shard's lock: any container of it still here belongs to a dead pool child.
        if containers.remove_orphans_of(cfg.hostname, run=run_id, shard=shard):
            logger.warning("run %s shard %s: removed the container of a dead worker process", run_id, shard)
        if store.exists(published):
            # A re-delivery of an attempt that already finished: announce, do not redo.
            count, errors, reuse = _published_counts(store, published, cfg)
            _announce(run_id, shard, attempt, published, count, errors, redelivered=True, cache=reuse)
            return
        model = spec["model"]
        # GPUs first: a shard that waits for one stays queued, and holds nothing else meanwhile.
        gpu_lease = held.enter_context(stagekit.held_gpus(stagekit.take_gpus(cfg, model)))
        events.emit(run_id, "started", "infer", shard=shard, attempt=attempt)
        # Held until the container is gone: eviction never removes a cached version in use.
        sync_started = time.monotonic()
        # Only this shard's samples' objects: N hosts fetch the dataset about once between them.
        mine = Selection.of_shard(shard, spec["shards"])
        dataset_dir = held.enter_context(
            dataset_lease(
                spec["dataset"], cfg, on_progress=stagekit.sync_progress(run_id, shard), select=mine
            )
        )
        sync_s = time.monotonic() - sync_started  # node-cache sync (or local check) of this shard
        with stagekit.job_dir(cfg, f"run{run_id}-s{shard}-a{attempt}") as job:
            samples = _shard_samples(dataset_dir, spec, shard)
            ids = [str(x["id"]) for x in samples]
            cache = predcache.PredictionCache(store, spec, job)
            keys = predcache.shard_keys(spec, dataset_dir, samples) if cache.enabled else {}
            found = cache.lookup(keys)
            todo = [x for x in samples if str(x["id"]) not in found.lines]
            reuse = {"hits": found.hits, "resumed": found.resumed, "misses": len(todo)}
            _tell_reuse(run_id, shard, attempt, found, len(todo), len(ids))
            merged = job / "predictions.jsonl"
            facts: dict[str, object] = {"image_digest": model["digest"], "duration_s": 0.0}
            errors = 0
            if todo:
                where = _Where(shard, attempt, job, dataset_dir, len(ids))
                ran = _infer_missing(cfg, spec, where, todo, gpu_lease, cache, keys)
                errors = ran.errors
                facts = {"image_digest": ran.image_id, "duration_s": round(ran.duration_s, 3)}
            # else: every sample is in the cache: no container starts at all.
            _write_merged(merged, ids, found.lines, job / "output" / "predictions.jsonl")

            def alive(error: str) -> None:
                # A progress tick keeps the shard's sign of life while the store is away.
                events.emit(
                    run_id, "progress", "infer", shard=shard, attempt=attempt, done=len(ids), total=len(ids)
                )

            stagekit.put(store, cfg, spec, merged, contract.shard_predictions_key(shard, attempt), alive)
        _announce(
            run_id,
            shard,
            attempt,
            published,
            len(ids),
            errors,
            **facts,
            sync_s=round(sync_s, 3),
            cache=reuse,
        )


def _tell_reuse(
    run_id: int, shard: int, attempt: int, found: predcache.Lookup, misses: int, total: int
) -> None:
    """Say what the shard takes from the cache before it infers the rest (a log event, a progress tick)."""
    if not found.lines:
        return
    parts = []
    if found.resumed:
        parts.append(f"resumed {found.resumed} validated predictions of this run's earlier attempts")
    if found.hits:
        runs = ", ".join(str(r) for r in sorted(found.runs))
        parts.append(f"{found.hits} from the prediction cache (computed by run {runs})")
    message = f"shard {shard}: {'; '.join(parts)}; {misses} of {total} samples to infer"
    data = {
        "cache": {"hits": found.hits, "resumed": found.resumed, "misses": misses, "runs": sorted(found.runs)}
    }
    events.emit(run_id, "log", "infer", shard=shard, attempt=attempt, message=message, data=data)
    events.emit(run_id, "progress", "infer", shard=shard, attempt=attempt, done=len(found.lines), total=total)


@dataclass(frozen=True)
class _Where:
    shard: int
    attempt: int
    job: Path
    dataset_dir: Path
    total: int  # samples in the shard, cached ones included


@dataclass(frozen=True)
class _Ran:
    errors: int
    image_id: str
    duration_s: float


def _infer_missing(
    cfg: HostConfig,
    spec: contract.RunSpec,
    where: _Where,
    todo: list[dict[str, Any]],
    gpu_lease: GpuLease | None,
    cache: predcache.PredictionCache,
    keys: dict[str, str],
) -> _Ran:
    """Run the model container on the samples the cache does not hold; cache each line as it lands.

    Raises:
        HostError: the container failed, or its output is not one valid line per sample sent.
        stagekit.Cancelled: the run was cancelled while it ran.
    """
    run_id, model = spec["run_id"], spec["model"]
    shard, attempt, job, total = where.shard, where.attempt, where.job, where.total
    store = cache.store
    base = spec["artifacts_uri"]
    ids = _write_shard_input(todo, spec, job)
    out = job / "output"
    labels = {
        "org.hyperbench.run": str(run_id),
        "org.hyperbench.shard": str(shard),
        "org.hyperbench.attempt": str(attempt),
        "org.hyperbench.stage": "infer",
    }
    cspec = stagekit.container_spec(
        spec,
        cfg,
        image=model["image"],
        digest=model["digest"],
        labels=labels,
        network=model["network"],
        gpu_ids=[str(i) for i in gpu_lease.indices] if gpu_lease else [],
        mounts=[
            containers.BindMount(where.dataset_dir, "/data"),
            containers.BindMount(job / "input.jsonl", "/job/input.jsonl"),
            containers.BindMount(job / "params.json", "/job/params.json"),
            containers.BindMount(out, "/job/output", read_only=False),
            *_endpoint_mount(cfg, model, job),
        ],
    )
    raw = out / "predictions.jsonl"
    # Validated lines go into the cache as they land: a later attempt resumes from them.
    tail = predcache.Tail(cache, raw, {i: keys[i] for i in ids if i in keys}, shard, attempt)
    progress = _progress_reader(run_id, shard, attempt, out, total, already=total - len(ids))

    def tick() -> None:
        progress()
        tail.drain()

    try:
        result = containers.run(cspec, on_tick=tick, should_stop=stagekit.cancel_check(cfg, run_id))
    finally:
        tail.drain()  # whatever landed before an end of any kind
    if result.cancelled:
        raise stagekit.Cancelled

    def alive(error: str) -> None:
        events.emit(run_id, "progress", "infer", shard=shard, attempt=attempt, done=total, total=total)

    log_key = contract.log_key("infer", attempt, shard)
    stagekit.keep_log(store, cfg, spec, log_key, result.log_tail, job, alive)
    try:
        stagekit.raise_unless_ok(f"Model container {model['image']}", result, spec)
        _, errors = _check_predictions(raw, ids)
    except HostError:
        _keep_rejected(store, raw, uri_join(base, contract.shard_rejected_key(shard, attempt)))
        raise
    return _Ran(errors, result.image_id, result.duration_s)


def _write_merged(merged: Path, ids: list[str], cached: dict[str, dict[str, Any]], raw: Path) -> None:
    """The shard's predictions in manifest order: the cache's lines, then what the container wrote."""
    fresh: dict[str, str] = {}
    if len(cached) < len(ids):
        with open(raw, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    fresh[str(json.loads(line)["id"])] = line.rstrip("\n")
    with open(merged, "w", encoding="utf-8") as f:
        for sid in ids:
            line = json.dumps(cached[sid], ensure_ascii=False) if sid in cached else fresh[sid]
            f.write(line + "\n")


def _announce(
    run_id: int, shard: int, attempt: int, uri: str, count: int, errors: int, **facts: object
) -> None:
    """``shard_succeeded``: the attempt's published predictions, their counts and its facts."""
    data = {"predictions_uri": uri, "attempt": attempt, "count": count, "errors": errors, **facts}
    events.emit(run_id, "shard_succeeded", "infer", shard=shard, attempt=attempt, data=data)
