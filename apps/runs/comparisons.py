"""Comparison reports: start one, record the host's answer, send a lost one again.

A comparison is a report of 2 to 8 succeeded runs on one dataset version,
rendered by the report image in comparison mode on a host (``TASK_COMPARE``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.utils import timezone

from apps.runs import dispatch
from apps.runs.models import Comparison, Run
from apps.runs.selectors import run_timings
from apps.runs.services import RunError, system_image_ref
from worker import contract


def comparison_payload(cmp: Comparison, runs: list[Run]) -> dict[str, Any]:
    """The host task's payload: where each run's outputs are, and its facts for the report."""
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
                "facts": {**r.spec.get("summary", {}), "image_digest": r.image_digest, **run_timings(r)},
            }
            for r in runs
        ],
        "report_image": system_image_ref(settings.HYPERBENCH_REPORT_IMAGE),
        "limits": spec["limits"],
        "artifacts_uri": settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + f"/comparisons/{cmp.pk}/",
    }
    return dict(payload)


def send_comparison(cmp: Comparison) -> None:
    """Send (on commit) the comparison's task for its current attempt."""
    by_id = {r.pk: r for r in Run.objects.filter(pk__in=cmp.run_ids)}
    payload = comparison_payload(cmp, [by_id[i] for i in cmp.run_ids])
    task_id = contract.comparison_task_id(cmp.pk, cmp.attempt)
    transaction.on_commit(
        lambda: dispatch.send(contract.TASK_COMPARE, payload, contract.Queue.CPU, task_id=task_id)
    )


def comparison_start(*, runs: list[Run], user: User | AnonymousUser | None = None) -> Comparison:
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
            sent_at=timezone.now(),
        )
        payload = comparison_payload(cmp, runs)
        task_id = contract.comparison_task_id(cmp.pk, 1)
        transaction.on_commit(
            lambda: dispatch.send(contract.TASK_COMPARE, payload, contract.Queue.CPU, task_id=task_id)
        )
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
