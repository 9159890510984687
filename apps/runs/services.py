"""Run lifecycle: start, cancel, and the control worker's handling of host events.

Every transition is a conditional update guarded by the row count
(``filter(pk=..., state=...).update(...)``): at-least-once delivery means any
event may arrive twice or late, and only the first arrival may move the run.
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from apps.catalog.models import ModelImage
from apps.hosts.models import Host
from apps.runs.models import Comparison, Experiment, Run, RunEvent, RunShard
from worker import contract

logger = logging.getLogger(__name__)


class RunError(Exception):
    """A run cannot be started or changed; the message says why."""


def _celery() -> Celery:
    from hyperbench_web.celery import app

    return app


def _send(task: str, payload: dict[str, Any], queue: str) -> None:
    # By name: the web side never imports the host worker's task code.
    _celery().send_task(task, args=[payload], queue=queue)


def _image_ref(image: str) -> contract.SystemImageRef:
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


def _build_spec(*, run: Run, experiment: Experiment, shards: int) -> contract.RunSpec:
    model = experiment.model
    dataset = experiment.dataset
    params: dict[str, object] = {**model.default_params, **experiment.params}
    artifacts = settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + f"/runs/{run.pk}/"
    return {
        "spec_version": contract.SPEC_VERSION,
        "run_id": run.pk,
        "dataset": {
            "name": dataset.name,
            "version": dataset.version,
            "task": dataset.task,
            "uri": dataset.source_uri,
            "manifest_sha256": dataset.manifest_sha256,
            "sample_count": dataset.sample_count,
        },
        "model": _model_ref(model),
        "params": params,
        "prompt": experiment.prompt,
        "shards": shards,
        "artifacts_uri": artifacts,
        "eval_image": _image_ref(settings.HYPERBENCH_EVAL_IMAGE),
        "report_image": _image_ref(settings.HYPERBENCH_REPORT_IMAGE),
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
    }


def run_start(*, experiment: Experiment, user: AbstractBaseUser | None = None, shards: int = 1) -> Run:
    """Create a queued run, freeze its spec, and dispatch its shards on commit."""
    most = min(settings.HYPERBENCH_MAX_SHARDS, max(experiment.dataset.sample_count, 1))
    if not 1 <= shards <= most:
        raise RunError(f"shards must be between 1 and {most}.")
    with transaction.atomic():
        run = Run.objects.create(
            experiment=experiment,
            spec={},
            shard_count=shards,
            progress_total=experiment.dataset.sample_count,
            manifest_sha256=experiment.dataset.manifest_sha256,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        run.spec = dict(_build_spec(run=run, experiment=experiment, shards=shards))
        run.save(update_fields=["spec"])
        RunShard.objects.bulk_create([RunShard(run=run, index=i) for i in range(shards)])
        queue = contract.Queue.GPU if experiment.model.requires_gpu else contract.Queue.CPU
        spec = run.spec
        for i in range(shards):
            payload: contract.ShardTask = {"spec": spec, "shard": i, "attempt": 1}
            transaction.on_commit(lambda p=payload: _send(contract.TASK_INFER_SHARD, dict(p), queue))
    return run


def run_cancel(*, run: Run) -> bool:
    """Cancel a run that has not finished. Returns False if it already had."""
    changed = (
        Run.objects.filter(pk=run.pk)
        .exclude(state__in=Run.TERMINAL)
        .update(state=Run.State.CANCELLED, finished_at=timezone.now(), error_reason="Cancelled by a user.")
    )
    return changed == 1


def _fail(run_id: int, reason: str) -> None:
    Run.objects.filter(pk=run_id).exclude(state__in=Run.TERMINAL).update(
        state=Run.State.FAILED, error_reason=reason[:4000], finished_at=timezone.now()
    )


def _start_evaluation(run: Run) -> None:
    shards = list(run.shards.order_by("index"))
    claimed = Run.objects.filter(pk=run.pk, state=Run.State.RUNNING).update(state=Run.State.EVALUATING)
    if claimed != 1:
        return  # another delivery of the last shard's event already claimed it
    payload = {"spec": run.spec, "predictions": [s.predictions_uri for s in shards]}
    transaction.on_commit(lambda: _send(contract.TASK_EVALUATE, payload, contract.Queue.CPU))


def _start_report(run: Run, data: dict[str, Any]) -> None:
    metrics = data.get("metrics") or {}
    claimed = Run.objects.filter(pk=run.pk, state=Run.State.EVALUATING).update(
        state=Run.State.REPORTING,
        metrics=metrics,
        metric_version=str(metrics.get("metric_version", "")),
        metrics_uri=str(data.get("metrics_uri", "")),
        per_sample_uri=str(data.get("per_sample_uri", "")),
        predictions_uri=str(data.get("predictions_uri", "")),
    )
    if claimed != 1:
        return
    run.refresh_from_db()
    facts = dict(run.spec.get("summary", {}))
    facts.update(_timings(run))
    payload = {
        "spec": run.spec,
        "metrics_uri": run.metrics_uri,
        "per_sample_uri": run.per_sample_uri,
        "predictions_uri": run.predictions_uri,
        "run_facts": facts,
    }
    transaction.on_commit(lambda: _send(contract.TASK_REPORT, payload, contract.Queue.CPU))


def _timings(run: Run) -> dict[str, Any]:
    """The run's timing facts for the report, from the event log and the run's counters.

    ``sync_s``: dataset sync seconds summed over the shards (each shard's
    ``shard_succeeded`` event carries its own; the first report of a shard
    counts, as in event_record). ``inference_s``: wall clock from the first
    shard's start to the last shard's end (the syncs happen inside it).
    ``container_s``: the model containers' run time summed over shards.
    ``evaluation_s``: wall clock of the evaluation. ``gpu_seconds``: container
    time x GPUs held, summed over shards.
    """
    firsts: dict[tuple[str, str], Any] = {}
    shard_end: dict[int | None, Any] = {}
    sync: dict[int | None, float] = {}
    kinds = ["started", "shard_succeeded", "evaluated"]
    for ev in run.events.filter(kind__in=kinds).order_by("created_at", "id"):
        firsts.setdefault((ev.kind, ev.stage), ev.created_at)
        if ev.kind == "shard_succeeded" and ev.shard not in shard_end:
            # Only the first report of a shard's end counts: later ones are re-deliveries.
            shard_end[ev.shard] = ev.created_at
            seconds = (ev.data or {}).get("sync_s")
            if isinstance(seconds, int | float):
                sync[ev.shard] = float(seconds)
    out: dict[str, Any] = {}
    if sync:
        out["sync_s"] = round(sum(sync.values()), 3)
    infer_start = firsts.get(("started", "infer"))
    if infer_start and shard_end:
        out["inference_s"] = round((max(shard_end.values()) - infer_start).total_seconds(), 2)
        if out["inference_s"] > 0:
            out["throughput_samples_per_s"] = round(run.progress_total / out["inference_s"], 2)
    if run.inference_s:
        out["container_s"] = round(run.inference_s, 2)
    eval_start, eval_end = firsts.get(("started", "evaluate")), firsts.get(("evaluated", "evaluate"))
    if eval_start and eval_end:
        out["evaluation_s"] = round((eval_end - eval_start).total_seconds(), 2)
    out["gpu_seconds"] = round(run.gpu_seconds, 2)
    return out


def _sync_progress_record(*, run: Run, event: contract.Event, data: dict[str, Any]) -> None:
    """Keep one ``progress``/``sync`` RunEvent per (shard, host), holding that sync's latest tick.

    A sync ticks about once a second (files, bytes, rate in ``data``; the host
    puts the shard there, None for evaluate/report): a row per tick would bury
    the run's other events. Ticks may arrive late or twice, so an older tick
    never overwrites a newer one. A tick also counts as a sign of life of its
    shard: a long sync runs no container the reconciler could see.
    """
    raw = data.get("shard", event.get("shard"))
    shard = raw if isinstance(raw, int) and not isinstance(raw, bool) else None
    host = event.get("host", "")
    ts = float(event.get("ts") or 0.0)
    data = {**data, "shard": shard, "ts": ts}
    message = event.get("message") or ""
    now = timezone.now()
    with transaction.atomic():
        row = (
            RunEvent.objects.select_for_update()
            .filter(run=run, kind="progress", stage="sync", shard=shard, host=host)
            .order_by("-id")
            .first()
        )
        if row is None:
            RunEvent.objects.create(
                run=run, kind="progress", stage="sync", host=host, shard=shard, message=message, data=data
            )
        elif float((row.data or {}).get("ts") or 0.0) <= ts:
            RunEvent.objects.filter(pk=row.pk).update(message=message, data=data)
        if shard is not None and run.state not in Run.TERMINAL:
            RunShard.objects.filter(run=run, index=shard, state=RunShard.State.RUNNING, host=host).update(
                updated_at=now
            )


def event_record(*, event: contract.Event) -> None:
    """Apply one host event to the DB (control worker). Safe to call twice."""
    run_id = int(event["run_id"])
    kind = event["kind"]
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("event for unknown run %s ignored: %s", run_id, kind)
        return
    shard_index = event.get("shard")
    data = dict(event.get("data") or {})
    attempt = event.get("attempt")
    stale = (
        shard_index is not None
        and attempt is not None
        and RunShard.objects.filter(run=run, index=shard_index, attempt__gt=attempt).exists()
    )
    if kind == "progress" and event["stage"] == "sync":
        _sync_progress_record(run=run, event=event, data=data)
        return
    if kind == "progress":
        if shard_index is not None and not stale:
            RunShard.objects.filter(run=run, index=shard_index).update(
                done=int(event.get("done", 0)),
                total=int(event.get("total", 0)),
                state=RunShard.State.RUNNING,
                updated_at=timezone.now(),
            )
            agg = run.shards.aggregate(done=Sum("done"))
            Run.objects.filter(pk=run_id).update(progress_done=agg["done"] or 0)
        return
    with transaction.atomic():
        RunEvent.objects.create(
            run=run,
            kind=kind,
            stage=event["stage"],
            host=event.get("host", ""),
            shard=shard_index,
            message=event.get("reason") or event.get("message") or "",
            data=data or None,
        )
        if run.state in Run.TERMINAL or stale:
            return  # late events of a finished run, or of a superseded attempt, change nothing
        if kind == "started":
            Run.objects.filter(pk=run_id, state=Run.State.QUEUED).update(
                state=Run.State.RUNNING, started_at=timezone.now()
            )
            if shard_index is not None:
                RunShard.objects.filter(run=run, index=shard_index).update(
                    state=RunShard.State.RUNNING,
                    host=event.get("host", ""),
                    attempt=event.get("attempt", 1),
                    updated_at=timezone.now(),
                )
        elif kind == "shard_succeeded" and shard_index is not None:
            Run.objects.filter(pk=run_id, state=Run.State.QUEUED).update(
                state=Run.State.RUNNING, started_at=timezone.now()
            )
            # Only the first report of a shard's end counts (events arrive at least once).
            first = (
                RunShard.objects.filter(run=run, index=shard_index)
                .exclude(state=RunShard.State.SUCCEEDED)
                .update(
                    state=RunShard.State.SUCCEEDED,
                    predictions_uri=str(data.get("predictions_uri", "")),
                    done=F("total") if data.get("count") is None else int(str(data["count"])),
                    errors=int(str(data.get("errors", 0))),
                )
            )
            if data.get("image_digest"):
                Run.objects.filter(pk=run_id).update(image_digest=str(data["image_digest"]))
            if first:
                model = run.spec.get("model", {})
                seconds = float(str(data.get("duration_s", 0.0)))
                gpus = int(model.get("gpus", 0)) if model.get("requires_gpu") else 0
                Run.objects.filter(pk=run_id).update(
                    inference_s=F("inference_s") + seconds, gpu_seconds=F("gpu_seconds") + seconds * gpus
                )
            agg = run.shards.aggregate(done=Sum("done"))
            Run.objects.filter(pk=run_id).update(progress_done=agg["done"] or 0)
            run.refresh_from_db()
            if not run.shards.exclude(state=RunShard.State.SUCCEEDED).exists():
                _start_evaluation(run)
        elif kind == "evaluated":
            _start_report(run, data)
        elif kind == "reported":
            Run.objects.filter(pk=run_id, state=Run.State.REPORTING).update(
                state=Run.State.SUCCEEDED,
                report_uri=str(data.get("report_uri", "")),
                finished_at=timezone.now(),
            )
        elif kind == "failed":
            if shard_index is not None:
                RunShard.objects.filter(run=run, index=shard_index).update(state=RunShard.State.FAILED)
            where = f"{event['stage']}" + (f" (shard {shard_index})" if shard_index is not None else "")
            host = event.get("host") or socket.gethostname()
            _fail(run_id, f"{where} failed on {host}: {event.get('reason', 'no reason given')}")


def comparison_start(*, runs: list[Run], user: AbstractBaseUser | None = None) -> Comparison:
    """Queue a comparison report of succeeded runs on one dataset version."""
    if not 2 <= len(runs) <= 8:
        raise RunError("Compare between 2 and 8 runs.")
    if len({r.pk for r in runs}) != len(runs):
        raise RunError("Each run may appear once in a comparison.")
    not_done = [r.pk for r in runs if r.state != Run.State.SUCCEEDED]
    if not_done:
        raise RunError(f"Only succeeded runs can be compared; not succeeded: {not_done}.")
    if len({r.manifest_sha256 for r in runs}) != 1:
        raise RunError(
            "The runs were made on different dataset versions (manifests differ); compare like with like."
        )
    dataset = runs[0].experiment.dataset
    with transaction.atomic():
        cmp = Comparison.objects.create(
            run_ids=[r.pk for r in runs],
            dataset=dataset,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        spec = runs[0].spec
        payload: contract.CompareTask = {
            "comparison_id": cmp.pk,
            "dataset": spec["dataset"],
            "runs": [
                {
                    "run_id": r.pk,
                    "metrics_uri": r.metrics_uri,
                    "per_sample_uri": r.per_sample_uri,
                    "predictions_uri": r.predictions_uri,
                    # The same timing facts as the run's own report (sync, inference, throughput).
                    "facts": {**r.spec.get("summary", {}), "image_digest": r.image_digest, **_timings(r)},
                }
                for r in runs
            ],
            "report_image": _image_ref(settings.HYPERBENCH_REPORT_IMAGE),
            "limits": spec["limits"],
            "artifacts_uri": settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + f"/comparisons/{cmp.pk}/",
        }
        transaction.on_commit(lambda: _send(contract.TASK_COMPARE, dict(payload), contract.Queue.CPU))
    return cmp


def comparison_record(*, result: contract.ComparisonResult) -> None:
    """The host's answer for a comparison (control worker). Safe to call twice."""
    qs = Comparison.objects.filter(pk=result["comparison_id"], state=Comparison.State.QUEUED)
    if result.get("ok"):
        qs.update(
            state=Comparison.State.SUCCEEDED,
            report_uri=result.get("report_uri", ""),
            finished_at=timezone.now(),
        )
    else:
        qs.update(
            state=Comparison.State.FAILED,
            finished_at=timezone.now(),
            error_reason=f"failed on {result.get('host', '?')}: {result.get('reason', 'no reason given')}",
        )


MAX_SHARD_ATTEMPTS = 3


def runs_reconcile(*, now: datetime | None = None) -> list[str]:
    """Find shards that went quiet and dispatch them again, within a bounded number of attempts.

    A running shard is quiet when it has sent nothing for HYPERBENCH_STALE_SHARD_S
    and its host does not report its container running (the host is silent, or
    its worker was restarted and lost the task). Returns what was done, for logs.
    """
    now = now or timezone.now()
    stale_before = now - timedelta(seconds=settings.HYPERBENCH_STALE_SHARD_S)
    actions: list[str] = []
    quiet = RunShard.objects.filter(
        run__state=Run.State.RUNNING, state=RunShard.State.RUNNING, updated_at__lt=stale_before
    ).select_related("run")
    for shard in quiet:
        host = Host.objects.filter(name=shard.host).first()
        if (
            host is not None
            and not host.silent
            and any(r.get("run") == shard.run_id and r.get("shard") == shard.index for r in host.running)
        ):
            continue  # slow but alive: its host still runs the container
        if shard.attempt >= MAX_SHARD_ATTEMPTS:
            _fail(
                shard.run_id,
                f"infer (shard {shard.index}) went quiet on {shard.host or 'its host'} "
                f"{shard.attempt} times (the worker died or lost the task); check the host, then retry.",
            )
            actions.append(f"run {shard.run_id} shard {shard.index}: failed after {shard.attempt} attempts")
            continue
        claimed = RunShard.objects.filter(
            pk=shard.pk, attempt=shard.attempt, state=RunShard.State.RUNNING
        ).update(attempt=shard.attempt + 1, state=RunShard.State.PENDING, done=0, updated_at=now)
        if claimed != 1:
            continue
        RunEvent.objects.create(
            run=shard.run,
            kind="log",
            stage="infer",
            shard=shard.index,
            message=f"shard {shard.index} went quiet on {shard.host or 'its host'}; dispatched again "
            f"(attempt {shard.attempt + 1})",
        )
        queue = contract.Queue.GPU if shard.run.spec["model"]["requires_gpu"] else contract.Queue.CPU
        payload = {"spec": shard.run.spec, "shard": shard.index, "attempt": shard.attempt + 1}
        transaction.on_commit(lambda p=payload, q=queue: _send(contract.TASK_INFER_SHARD, p, q))
        actions.append(f"run {shard.run_id} shard {shard.index}: attempt {shard.attempt + 1}")
    return actions
