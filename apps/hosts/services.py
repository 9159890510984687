from __future__ import annotations

from datetime import UTC, datetime

from apps.hosts.models import Host
from worker import contract


def host_report_record(*, report: contract.HostReport) -> Host:
    """Store a host's heartbeat; a late (older) report never overwrites a newer one."""
    seen = datetime.fromtimestamp(float(report["ts"]), tz=UTC)
    fields = {
        "worker": report.get("worker", ""),
        "last_seen": seen,
        "nvml": bool(report.get("nvml")),
        "gpus": report.get("gpus", []),
        "cache": report.get("cache", []),
        "cache_bytes": int(report.get("cache_bytes", 0)),
        "cache_budget_bytes": int(report.get("cache_budget_bytes", 0)),
        "running": report.get("running", []),
    }
    host, created = Host.objects.get_or_create(name=report["host"], defaults=fields)
    if not created:
        Host.objects.filter(pk=host.pk, last_seen__lt=seen).update(**fields)
        host.refresh_from_db()
    return host
