from __future__ import annotations

import logging
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from apps.hosts.models import Host
from worker import contract

logger = logging.getLogger(__name__)


def host_report_record(*, report: contract.HostReport) -> tuple[Host, bool]:
    """Store a host's heartbeat; a late (older) report never overwrites a newer one.

    Returns the host and whether this report names a new instance of a host
    seen before (its worker restarted: the work of the old instance is lost).
    """
    seen = datetime.fromtimestamp(float(report["ts"]), tz=UTC)
    instance = str(report.get("instance", ""))[:64]
    fields = {
        "worker": report.get("worker", ""),
        "instance": instance,
        "queue": str(report.get("queue", ""))[:210],
        "dataset_roots": [str(r) for r in report.get("dataset_roots", [])],
        "slots": max(0, int(report.get("slots", 1))),
        "active": max(0, int(report.get("active", 0))),
        "tasks": [str(t)[:100] for t in report.get("tasks", [])][:1000],
        "last_seen": seen,
        "nvml": bool(report.get("nvml")),
        "gpus": report.get("gpus", []),
        "cache": report.get("cache", []),
        "cache_bytes": int(report.get("cache_bytes", 0)),
        "cache_budget_bytes": int(report.get("cache_budget_bytes", 0)),
        "running": report.get("running", []),
        "reported_at": timezone.now(),
    }
    host, created = Host.objects.get_or_create(name=report["host"], defaults=fields)
    if created:
        return host, False
    before = host.instance
    Host.objects.filter(pk=host.pk, last_seen__lt=seen).update(**fields)
    host.refresh_from_db()
    return host, bool(before and instance and host.instance == instance and before != instance)


def heartbeats_record(reports: list[contract.HostReport]) -> None:
    """Store heartbeats (a drain's, or one old-style task's): the newest of each host only. A host
    that came back as a new instance lost what its previous start ran: the reconciler moves that
    work now, once for all of them, not after the quiet window."""
    newest: dict[str, contract.HostReport] = {}
    for r in reports:
        name = str(r.get("host", ""))
        if name and (name not in newest or float(r["ts"]) >= float(newest[name]["ts"])):
            newest[name] = r
    restarted = []
    with transaction.atomic():  # one commit for all of them (a savepoint each)
        for name, r in newest.items():
            try:
                with transaction.atomic():
                    if host_report_record(report=r)[1]:
                        restarted.append(name)
            except Exception:  # one host's bad report must not drop the others'
                logger.exception("the heartbeat of host %s could not be stored", name)
    if restarted:
        from apps.runs.reconcile import runs_reconcile

        for action in runs_reconcile():
            logger.warning("host(s) %s restarted: %s", ", ".join(restarted), action)
