from __future__ import annotations

from celery import shared_task

from apps.hosts.services import host_report_record
from worker import contract


@shared_task(name=contract.TASK_HOST_HEARTBEAT, ignore_result=True)
def host_heartbeat(report: contract.HostReport) -> None:
    host_report_record(report=report)
