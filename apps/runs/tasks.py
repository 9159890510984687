"""Control-queue tasks: thin interfaces that hand host events to services."""

from __future__ import annotations

from celery import shared_task

from apps.runs.services import comparison_record, event_record, runs_reconcile
from worker import contract


@shared_task(name=contract.TASK_RECORD_EVENT, acks_late=True)
def record_event(event: contract.Event) -> None:
    event_record(event=event)


@shared_task(name=contract.TASK_RECORD_COMPARISON, acks_late=True)
def record_comparison(result: contract.ComparisonResult) -> None:
    comparison_record(result=result)


@shared_task(name="hyperbench.control.reconcile", ignore_result=True)
def reconcile() -> list[str]:
    return runs_reconcile()
