from __future__ import annotations

from celery import shared_task

from apps.hosts.services import heartbeats_record
from worker import contract


@shared_task(name=contract.TASK_HOST_HEARTBEAT, ignore_result=True)
def host_heartbeat(report: contract.HostReport) -> None:
    """A heartbeat sent as its own Celery task (hosts before heartbeats went on ``hb.events``)."""
    heartbeats_record([report])
