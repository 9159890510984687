"""Run lifecycle: start, cancel, and the control worker's handling of host events.

Every transition is a conditional update guarded by the row count
(``filter(pk=..., state=...).update(...)``): at-least-once delivery means any
event may arrive twice or late, and only the first arrival may move the run.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal, cast

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.utils import timezone

from apps.catalog.models import ModelImage
from apps.runs import dispatch
from apps.runs.models import Experiment, Run, RunShard
from apps.runs.selectors import run_timings
from worker import contract

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A run cannot be started or changed; the message says why."""


def system_image_ref(image: str) -> contract.SystemImageRef:
    """A system image (eval or report) with the image id its settings pin it to.

    The pin comes from the web side's settings, next to the reference
    (HYPERBENCH_EVAL_IMAGE + HYPERBENCH_EVAL_IMAGE_DIGEST, the same for the
    report); the host refuses to run it when its local image differs.

    Raises:
        RunError: the image has no valid pin; nothing is dispatched.
    """
    pins = {
        settings.HYPERBENCH_EVAL_IMAGE: "HYPERBENCH_EVAL_IMAGE_DIGEST",
        settings.HYPERBENCH_REPORT_IMAGE: "HYPERBENCH_REPORT_IMAGE_DIGEST",
    }
    variable = pins.get(image, "")
    digest = str(getattr(settings, variable, "")) if variable else ""
    if not contract.is_image_id(digest):
        where = variable or "the digest setting of this image"
        raise RunError(
            f"The system image {image} is not pinned: an operator must set {where} to its image id "
            f"(docker image inspect --format '{{{{.Id}}}}' {image}) on the web side and the control worker."
        )
    return {"image": image, "digest": digest}


def _model_ref(model: ModelImage) -> contract.ModelRef:
    if not contract.is_image_id(model.digest):
        # Rows registered before digests were required: never run them unpinned.
        raise RunError(
            f"Model {model.name} has no pinned image id; staff must register it again with its digest "
            f"(docker image inspect --format '{{{{.Id}}}}' {model.image})."
        )
    ref: contract.ModelRef = {
        "name": model.name,
        "image": model.image,
        "digest": model.digest,
        "requires_gpu": model.requires_gpu,
        "gpus": model.gpus,
        "network": model.network or bool(model.endpoint_base_url),
    }
    if model.endpoint_base_url:
        ref["endpoint"] = {
            "base_url": model.endpoint_base_url,
            "model": model.endpoint_model,
            "api_key_env": model.endpoint_api_key_env,
            "max_concurrency": model.endpoint_max_concurrency,
            "timeout_s": model.endpoint_timeout_s,
        }
    return ref


def prediction_cache_uri() -> str:
    """Where the hosts keep the prediction cache (HYPERBENCH_PREDICTION_CACHE_URI, or under the artifacts)."""
    configured = str(settings.HYPERBENCH_PREDICTION_CACHE_URI or "")
    if configured:
        return configured.rstrip("/") + "/"
    return settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + "/cache/predictions/"


def _cache_ref(run: Run, model: ModelImage, reuse: bool) -> contract.CacheRef:
    return {
        "uri": prediction_cache_uri(),
        "reuse": reuse,
        "cacheable": model.cacheable,
        "scope": run.pk,
        "lineage": [run.pk],
    }


def _build_spec(*, run: Run, experiment: Experiment, shards: int, reuse: bool = True) -> contract.RunSpec:
    model = experiment.model
    dataset = experiment.dataset
    params: dict[str, object] = {**model.default_params, **experiment.params}
    artifacts = _artifacts_uri(run)
    return {
        "spec_version": contract.SPEC_VERSION,
        "run_id": run.pk,
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "task": cast(Literal["ocr", "vqa"], dataset.task),  # the column's choices: Dataset.Task
            "uri": dataset.source_uri,
            "s3_uri": dataset.s3_uri,
            "manifest_sha256": dataset.manifest_sha256,
            "sample_count": dataset.sample_count,
        },
        "model": _model_ref(model),
        "params": params,
        "prompt": experiment.prompt,
        "shards": shards,
        "artifacts_uri": artifacts,
        "eval_image": system_image_ref(settings.HYPERBENCH_EVAL_IMAGE),
        "report_image": system_image_ref(settings.HYPERBENCH_REPORT_IMAGE),
        "limits": {
            "timeout_s": settings.HYPERBENCH_CONTAINER_TIMEOUT_S,
            "memory_mb": settings.HYPERBENCH_CONTAINER_MEMORY_MB,
            "cpus": settings.HYPERBENCH_CONTAINER_CPUS,
            "pids": settings.HYPERBENCH_CONTAINER_PIDS,
        },
        "summary": {
            "run_id": run.pk,
            "experiment": experiment.name,
            "owner": experiment.owner.get_username(),
            "model": model.name,
            "image": model.image,
            "image_digest": model.digest,
            "dataset": f"{dataset.name}@{dataset.version}",
            "task": dataset.task,
            "manifest_sha256": dataset.manifest_sha256,
            "samples": dataset.sample_count,
            "params": params,
            "prompt": experiment.prompt,
            "shards": shards,
        },
        "cache": _cache_ref(run, model, reuse),
    }


def _artifacts_uri(run: Run) -> str:
    return settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + f"/runs/{run.pk}/"


def run_start(
    *,
    experiment: Experiment,
    user: User | AnonymousUser | None = None,
    shards: int = 1,
    reuse: bool = True,
) -> Run:
    """Create a queued run, freeze its spec, and dispatch its shards on commit.

    ``reuse``: take predictions other runs left in the prediction cache (False recomputes every
    sample, for a timing benchmark; what it computes still goes into the cache).
    """
    most = min(settings.HYPERBENCH_MAX_SHARDS, max(experiment.dataset.sample_count, 1))
    if not 1 <= shards <= most:
        raise RunError(f"shards must be between 1 and {most}.")
    with transaction.atomic():
        run = _create_run(experiment, user, shards)
        run.spec = dict(_build_spec(run=run, experiment=experiment, shards=shards, reuse=reuse))
        run.save(update_fields=["spec"])
        _dispatch_new(run)
    return run


def _create_run(
    experiment: Experiment, user: User | AnonymousUser | None, shards: int, retry_of: Run | None = None
) -> Run:
    return Run.objects.create(
        experiment=experiment,
        spec={},
        shard_count=shards,
        progress_total=experiment.dataset.sample_count if retry_of is None else retry_of.progress_total,
        manifest_sha256=experiment.dataset.manifest_sha256 if retry_of is None else retry_of.manifest_sha256,
        created_by=user if user is not None and user.is_authenticated else None,
        retry_of=retry_of,
    )


def _dispatch_new(run: Run) -> None:
    """The new run's shard rows, and its shards sent on commit (inside the caller's transaction)."""
    shards = run.shard_count
    RunShard.objects.bulk_create([RunShard(run=run, index=i) for i in range(shards)])
    spec = run.spec
    try:
        queues = dispatch.placement(spec, range(shards))
    except dispatch.Unservable as e:
        raise RunError(str(e)) from e  # the transaction rolls back: no run is left behind
    for i in range(shards):
        transaction.on_commit(functools.partial(dispatch.send_shard, spec, i, 1, queues[i]))


RETRYABLE = (Run.State.FAILED, Run.State.CANCELLED)


def run_retry(*, run: Run, user: User | AnonymousUser | None = None) -> Run:
    """A new run of a failed or cancelled run's frozen spec, reusing what it (and its own retries'
    ancestors) predicted: only the missing or failed samples reach a model container.

    Everything in the spec stays as frozen (model digest, params, prompt, shards, system images)
    but the run's own id, artifacts and cache lineage. A run from before the prediction cache
    gets one, with ``reuse`` on.

    Raises:
        RunNotRetryable: the run is not failed or cancelled.
        RunError: its shards cannot be placed now.
    """
    if run.state not in RETRYABLE:
        raise RunNotRetryable(f"Run {run.pk} is {run.state}: only a failed or cancelled run can be retried.")
    old = dict(run.spec)
    with transaction.atomic():
        new = _create_run(run.experiment, user, int(old["shards"]), retry_of=run)
        cache = dict(old.get("cache") or _cache_ref(run, run.experiment.model, True))
        cache["lineage"] = [new.pk, *cache.get("lineage", [run.pk])]
        summary = {**dict(old.get("summary") or {}), "run_id": new.pk, "retry_of": run.pk}
        new.spec = {
            **old,
            "run_id": new.pk,
            "artifacts_uri": _artifacts_uri(new),
            "summary": summary,
            "cache": cache,
        }
        new.save(update_fields=["spec"])
        _dispatch_new(new)
    return new


class RunNotRetryable(RunError):
    """A retry of a run that is not failed or cancelled (the API answers 409)."""


def run_cancel(*, run: Run) -> bool:
    """Cancel a run that has not finished: stop its containers everywhere. False if it had finished.

    The run and every open shard move to ``cancelled`` in one transaction; on
    commit, the messages of its open shards (and of evaluate/report) are revoked,
    so a shard still queued never starts, and every host worker is told to stop
    the run's containers now (stop, kill, remove), which frees its GPU and cache
    leases as the shard's task unwinds. Late events change nothing afterwards.
    """
    with transaction.atomic():
        changed = Run.objects.filter(pk=run.pk, state__in=Run.ACTIVE).update(
            state=Run.State.CANCELLED, finished_at=timezone.now(), error_reason="Cancelled by a user."
        )
        if changed != 1:
            return False
        open_shards = list(RunShard.objects.filter(run_id=run.pk, state__in=RunShard.OPEN))
        RunShard.objects.filter(pk__in=[s.pk for s in open_shards]).update(state=RunShard.State.CANCELLED)
        fresh = Run.objects.get(pk=run.pk)
        ids = [contract.shard_task_id(run.pk, s.index, s.attempt) for s in open_shards]
        ids += [
            contract.stage_task_id(run.pk, stage, fresh.stage_attempt) for stage in ("evaluate", "report")
        ]
        transaction.on_commit(lambda: dispatch.cancel(ids, run.pk))
    return True


def fail_run(run_id: int, reason: str) -> None:
    with transaction.atomic():
        failed = Run.objects.filter(pk=run_id, state__in=Run.ACTIVE).update(
            state=Run.State.FAILED, error_reason=reason[:4000], finished_at=timezone.now()
        )
        if failed:
            # Nothing of a failed run may keep running: its other shards stop too.
            RunShard.objects.filter(run_id=run_id, state__in=RunShard.OPEN).update(
                state=RunShard.State.CANCELLED
            )
            transaction.on_commit(lambda: dispatch.stop_run(run_id))


def _cache_facts(run: Run) -> dict[str, Any]:
    """What the report says about reused predictions (nothing when every sample was inferred here)."""
    counts = run.cache_counts()
    if not counts["hits"]:
        return {}
    origins: set[int] = set()
    for data in run.events.filter(kind="log", stage="infer").values_list("data", flat=True):
        cache = (data or {}).get("cache") if isinstance(data, dict) else None
        if isinstance(cache, dict):
            origins.update(int(r) for r in cache.get("runs", []) if isinstance(r, int))
    named = f" (computed by run {', '.join(map(str, sorted(origins)))})" if origins else ""
    return {
        "prediction cache": f"{counts['hits']} of {counts['hits'] + counts['misses']} samples reused{named}; "
        "their latencies are those of the run that computed them",
    }


def send_stage(run: Run, stage: str, shards: list[RunShard] | None = None) -> None:
    """Send ``evaluate`` or ``report`` of a run in its current state (on commit), with its task id.

    ``shards``: the run's shards in index order, when the caller has them already.
    """
    if stage == "evaluate":
        shards = list(run.shards.order_by("index")) if shards is None else shards
        payload: dict[str, Any] = {"spec": run.spec, "predictions": [s.predictions_uri for s in shards]}
        task = contract.TASK_EVALUATE
    else:
        facts = dict(run.spec.get("summary", {}))
        facts.update(run_timings(run))
        facts.update(_cache_facts(run))
        payload = {
            "spec": run.spec,
            "metrics_uri": run.metrics_uri,
            "per_sample_uri": run.per_sample_uri,
            "predictions_uri": run.predictions_uri,
            "run_facts": facts,
        }
        task = contract.TASK_REPORT
    task_id = contract.stage_task_id(run.pk, stage, run.stage_attempt)
    transaction.on_commit(lambda: dispatch.send(task, payload, contract.Queue.CPU, task_id=task_id))
