from __future__ import annotations

from datetime import UTC, datetime

from django.contrib import admin
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.timesince import timesince

from apps.hosts.models import Host


def _when(ts: object) -> str:
    """A unix time from a host report, in the admin's time zone."""
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return "-"
    moment = timezone.localtime(datetime.fromtimestamp(ts, tz=UTC))
    return f"{moment:%Y-%m-%d %H:%M:%S} ({timesince(moment)} ago)"


def _mb(n: object) -> str:
    return f"{int(n) / 1024:.1f} GiB" if isinstance(n, int) else "-"


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = ["name", "status", "last_seen", "gpu_summary", "cache_summary", "running_summary"]
    readonly_fields = ["name", "worker", "last_seen", "nvml", "gpu_table", "cache_table", "running_summary"]
    exclude = ["gpus", "cache", "running", "cache_bytes", "cache_budget_bytes"]

    def has_add_permission(self, request: object) -> bool:
        return False  # hosts register themselves by reporting

    @admin.display(description="status")
    def status(self, obj: Host) -> str:
        return format_html(
            '<b style="color:{}">{}</b>', *(("#b00", "silent") if obj.silent else ("#070", "ok"))
        )

    @admin.display(description="GPUs")
    def gpu_summary(self, obj: Host) -> str:
        if not obj.gpus:
            return "none (NVML absent)" if not obj.nvml else "none"
        return ", ".join(f"{g.get('index')}: {g.get('name') or '?'}" for g in obj.gpus)

    @admin.display(description="cache")
    def cache_summary(self, obj: Host) -> str:
        budget = f" of {obj.cache_budget_bytes / 2**30:.1f} GiB" if obj.cache_budget_bytes else ""
        return f"{len(obj.cache)} version(s), {obj.cache_bytes / 2**20:.1f} MiB{budget}"

    @admin.display(description="running")
    def running_summary(self, obj: Host) -> str:
        if not obj.running:
            return "idle"
        return "; ".join(
            f"run {r.get('run')} {r.get('stage')}"
            + (f" shard {r['shard']}" if r.get("shard") is not None else "")
            + (f" on GPU {','.join(r['gpus'])}" if r.get("gpus") else "")
            for r in obj.running
        )

    @admin.display(description="GPUs")
    def gpu_table(self, obj: Host) -> str:
        if not obj.gpus:
            return "No GPUs reported (NVML absent or no devices); CPU models still run here."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    g.get("index"),
                    g.get("name"),
                    g.get("uuid"),
                    _mb(g.get("memory_used_mb")),
                    _mb(g.get("memory_total_mb")),
                    g.get("utilization_pct"),
                    g.get("temperature_c"),
                )
                for g in obj.gpus
            ),
        )
        return format_html(
            "<table><tr><th>#</th><th>name</th><th>uuid</th><th>memory</th><th>util %</th>"
            "<th>°C</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="cached dataset versions")
    def cache_table(self, obj: Host) -> str:
        if not obj.cache:
            return "empty"
        rows = format_html_join(
            "",
            # Sizes formatted here: format_html escapes every argument to a string first.
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} MiB</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    c.get("name"),
                    c.get("version"),
                    str(c.get("manifest_sha256", ""))[:12],
                    f"{int(c.get('bytes', 0)) / 2**20:.1f}",
                    _when(c.get("last_used")),
                    "in use" if c.get("in_use") else "",
                )
                for c in obj.cache
            ),
        )
        budget = (
            f"{obj.cache_bytes / 2**20:.1f} MiB used of a {obj.cache_budget_bytes / 2**30:.1f} GiB budget"
            if obj.cache_budget_bytes
            else f"{obj.cache_bytes / 2**20:.1f} MiB used"
        )
        return format_html(
            "<table><tr><th>dataset</th><th>version</th><th>manifest</th><th>size</th><th>last used</th>"
            "<th></th></tr>{}</table><p>{}</p>",
            rows,
            budget,
        )
