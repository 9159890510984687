"""Control-queue tasks: thin interfaces that hand host events to services."""

from __future__ import annotations

from celery import Task, shared_task
from django.conf import settings

from apps.runs.comparisons import comparison_record
from apps.runs.drain import drain_events
from apps.runs.events import event_record, events_record
from apps.runs.reconcile import runs_reconcile
from worker import contract


@shared_task(name=contract.TASK_RECORD_EVENT, acks_late=True)
def record_event(event: contract.Event) -> None:
    event_record(event=event)


@shared_task(name=contract.TASK_RECORD_EVENTS, acks_late=True)
def record_events(events: list[contract.Event]) -> None:
    events_record(events=events)


@shared_task(name=contract.TASK_DRAIN_EVENTS, bind=True, ignore_result=True)
def drain(self: Task) -> int:
    """Apply the hosts' waiting event batches; when a full batch was taken, drain again at once."""
    taken = drain_events(self.app)
    if taken >= settings.HYPERBENCH_EVENT_DRAIN_MAX:
        self.apply_async(expires=30)
    return taken


@shared_task(name=contract.TASK_RECORD_COMPARISON, acks_late=True)
def record_comparison(result: contract.ComparisonResult) -> None:
    comparison_record(result=result)


@shared_task(name="hyperbench.control.reconcile", ignore_result=True)
def reconcile() -> list[str]:
    return runs_reconcile()
