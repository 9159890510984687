"""Re-score without re-inference: evaluate and report a succeeded run's stored predictions again.

A rescore is an ``Evaluation`` row of the run, with a small state machine of its own
(``queued -> evaluating -> reporting -> succeeded``, or ``failed``); the run itself is
terminal and never moves. The host's evaluate/report tasks get a payload with ``rescore``
(``contract.Rescore``): every event they send names the evaluation (``data["evaluation"]``),
and :func:`apply_event` applies it here instead of the run's state machine. Every move is a
conditional update from the states that allow it, so a doubled or late event moves nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import transaction
from django.utils import timezone

from apps.runs import dispatch
from apps.runs.models import Evaluation, Run
from apps.runs.selectors import run_timings, version_key
from apps.runs.services import RunError, system_image_ref
from worker import contract

logger = logging.getLogger(__name__)


class RunNotRescorable(RunError):
    """A rescore of a run that did not succeed, or one already being re-scored (the API answers 409)."""


def run_rescore(*, run: Run, user: User | AnonymousUser | None = None) -> Evaluation:
    """Start a rescore of a succeeded run with today's eval and report images (no model container).

    Raises:
        RunNotRescorable: the run has not succeeded, has no stored predictions, or a rescore
            of it is still going.
        RunError: the system images are not pinned on the web side.
    """
    eval_image = system_image_ref(settings.HYPERBENCH_EVAL_IMAGE)
    report_image = system_image_ref(settings.HYPERBENCH_REPORT_IMAGE)
    with transaction.atomic():
        # The run's row lock: two rescores of one run started at once create one evaluation.
        locked = Run.objects.select_for_update().filter(pk=run.pk).first()
        if locked is None or locked.state != Run.State.SUCCEEDED or not locked.predictions_uri:
            state = locked.state if locked is not None else "gone"
            raise RunNotRescorable(
                f"Run {run.pk} is {state}: only a succeeded run (with stored predictions) can be re-scored."
            )
        going = locked.evaluations.filter(state__in=Evaluation.ACTIVE).first()
        if going is not None:
            raise RunNotRescorable(f"Run {run.pk} is being re-scored already (evaluation {going.pk}).")
        ev = Evaluation.objects.create(
            run=locked,
            eval_image=eval_image["image"],
            eval_image_digest=eval_image["digest"],
            report_image=report_image["image"],
            report_image_digest=report_image["digest"],
            created_by=user if user is not None and user.is_authenticated else None,
        )
        _send(locked, ev, "evaluate")
    return ev


def _spec(run: Run, ev: Evaluation) -> dict[str, Any]:
    """The run's frozen spec with the evaluation's system images and its own artifacts prefix."""
    return {
        **run.spec,
        "eval_image": {"image": ev.eval_image, "digest": ev.eval_image_digest},
        "report_image": {"image": ev.report_image, "digest": ev.report_image_digest},
        "artifacts_uri": run.spec["artifacts_uri"].rstrip("/") + f"/evaluations/{ev.pk}/",
    }


def _send(run: Run, ev: Evaluation, stage: str) -> None:
    """Send the rescore's evaluate or report on commit (inside the caller's transaction)."""
    spec = _spec(run, ev)
    if stage == "evaluate":
        rescore: contract.Rescore = {"evaluation": ev.pk, "predictions_uri": run.predictions_uri}
        payload: dict[str, Any] = {"spec": spec, "predictions": [], "rescore": rescore}
        task = contract.TASK_EVALUATE
    else:
        facts = dict(run.spec.get("summary", {}))
        facts.update(run_timings(run))
        facts["rescore"] = (
            f"evaluation {ev.pk} of run {run.pk}: the run's stored predictions scored again "
            f"with {ev.eval_image} (metric version {ev.metric_version}), no inference"
        )
        payload = {
            "spec": spec,
            "metrics_uri": ev.metrics_uri,
            "per_sample_uri": ev.per_sample_uri,
            "predictions_uri": run.predictions_uri,
            "run_facts": facts,
            "rescore": {"evaluation": ev.pk},
        }
        task = contract.TASK_REPORT
    task_id = contract.rescore_task_id(run.pk, ev.pk, stage)
    transaction.on_commit(lambda: dispatch.send(task, payload, contract.Queue.CPU, task_id=task_id))


def apply_event(run: Run, event: contract.Event, data: dict[str, Any]) -> None:
    """Apply a host event of a rescore (``data["evaluation"]`` names it) to its evaluation.

    Only the evaluation of this run moves, and only forward: ``started``/evaluate
    queued -> evaluating; ``evaluated`` queued|evaluating -> reporting (its metrics, then the
    report is sent once); ``reported`` reporting -> succeeded; ``failed`` of a stage fails it
    only while it is in that stage. Anything else is kept in the run's event log only.
    """
    try:
        ev_id = int(str(data.get("evaluation")))
    except ValueError:
        return
    rows = Evaluation.objects.filter(pk=ev_id, run_id=run.pk)
    kind, stage = event.get("kind"), event.get("stage")
    now = timezone.now()
    if kind == "started" and stage == "evaluate":
        rows.filter(state=Evaluation.State.QUEUED).update(state=Evaluation.State.EVALUATING)
    elif kind == "evaluated":
        metrics = data.get("metrics") or {}
        moved = rows.filter(state__in=(Evaluation.State.QUEUED, Evaluation.State.EVALUATING)).update(
            state=Evaluation.State.REPORTING,
            metrics=metrics,
            metric_version=str(metrics.get("metric_version", "")) if isinstance(metrics, dict) else "",
            metrics_uri=str(data.get("metrics_uri", "")),
            per_sample_uri=str(data.get("per_sample_uri", "")),
        )
        if moved:
            _send(run, rows.get(), "report")
    elif kind == "reported":
        rows.filter(state=Evaluation.State.REPORTING).update(
            state=Evaluation.State.SUCCEEDED, report_uri=str(data.get("report_uri", "")), finished_at=now
        )
    elif kind in ("failed", "cancelled"):
        from_states = (
            (Evaluation.State.REPORTING,)
            if stage == "report"
            else (Evaluation.State.QUEUED, Evaluation.State.EVALUATING)
        )
        reason = (
            f"{stage} failed on {event.get('host', '')}: {event.get('reason') or event.get('message', '')}"
        )
        rows.filter(state__in=from_states).update(
            state=Evaluation.State.FAILED, error_reason=reason[:4000], finished_at=now
        )


def runs_scored_below(version: str) -> list[int]:
    """The succeeded runs (with stored predictions) whose newest evaluation has a metric version
    older than ``version``: their newest succeeded rescore's, else their own. Oldest run first."""
    newest: dict[int, str] = {}
    rows = Run.objects.filter(state=Run.State.SUCCEEDED).exclude(predictions_uri="").order_by("pk")
    for pk, own in rows.values_list("pk", "metric_version"):
        newest[pk] = own
    rescored = (
        Evaluation.objects.filter(run_id__in=list(newest), state=Evaluation.State.SUCCEEDED)
        .order_by("created_at", "id")
        .values_list("run_id", "metric_version")
    )
    for run_id, v in rescored:
        newest[run_id] = v  # ascending: the last one seen is the newest
    bound = version_key(version)
    return [pk for pk, v in newest.items() if version_key(v) < bound]
