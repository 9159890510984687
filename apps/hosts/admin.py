"""Hosts in the admin: each GPU's memory and load, what runs where, the node cache against its
budget, the last heartbeat; a silent host stands out in the list and on its page."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.timesince import timesince

from apps.hosts.models import Host

BR = mark_safe("<br>")


def _moment(ts: object) -> datetime | None:
    """A unix time (cache entries) or an ISO time (Docker's StartedAt), as an aware datetime."""
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        try:
            return datetime.fromtimestamp(ts, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(ts, str) and ts and not ts.startswith("0001-"):
        try:
            moment = parse_datetime(ts)
        except ValueError:
            return None
        if moment is not None and timezone.is_naive(moment):
            moment = timezone.make_aware(moment, UTC)
        return moment
    return None


def _when(ts: object) -> str:
    """A time from a host report, in the admin's time zone, with its age."""
    moment = _moment(ts) if not isinstance(ts, datetime) else ts
    if moment is None:
        return "-"
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S} ({_age(moment)} ago)"


def _age(moment: datetime) -> str:
    seconds = (timezone.now() - moment).total_seconds()
    return f"{max(0, int(seconds))} s" if seconds < 120 else timesince(moment)


def _int(n: object) -> int | None:
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def _gib_from_mib(n: object) -> str:
    return f"{n / 1024:.1f} GiB" if (n := _int(n)) is not None else "-"


def _size(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _pct(used: object, total: object) -> int | None:
    used, total = _int(used), _int(total)
    if used is None or not total:
        return None
    return max(0, min(100, round(100 * used / total)))


def bar(pct: int | None, label: str, kind: str = "") -> SafeString:
    """A horizontal bar (pct of its width), amber above 75 %, red above 90 %, with a label after it."""
    if pct is None:
        return format_html('<span class="hb-muted">{}</span>', label)
    level = " hb-full" if pct > 90 else " hb-warn" if pct > 75 else ""
    return format_html(
        '<span class="hb-bar{}{}" title="{}%"><span style="width:{}%"></span></span> {}',
        "".join(f" hb-bar-{k}" for k in kind.split()),
        level,
        pct,
        pct,
        label,
    )


def gpu_rows(host: Host) -> list[dict[str, Any]]:
    """Each GPU (worker.gpus.GpuInfo: memory in MiB, utilization in %) with its bars."""
    rows = []
    for g in host.gpus if isinstance(host.gpus, list) else []:
        if not isinstance(g, dict):
            continue
        used, total, util = g.get("memory_used_mb"), g.get("memory_total_mb"), _int(g.get("utilization_pct"))
        mem_pct = _pct(used, total)
        util_pct = max(0, min(100, util)) if util is not None else None
        rows.append(
            {
                "index": g.get("index"),
                "name": g.get("name") or "?",
                "uuid": g.get("uuid") or "",
                "temperature": _int(g.get("temperature_c")),
                "memory": bar(mem_pct, f"{_gib_from_mib(used)} / {_gib_from_mib(total)}", "memory"),
                "utilization": bar(util_pct, f"{util} %" if util is not None else "not reported", "util"),
                # The list's one-line form: small bars, percentages only.
                "memory_short": bar(mem_pct, f"{mem_pct} %" if mem_pct is not None else "?", "memory sm"),
                "utilization_short": bar(
                    util_pct, f"{util_pct} %" if util_pct is not None else "?", "util sm"
                ),
            }
        )
    return rows


def running_rows(host: Host) -> list[dict[str, Any]]:
    """What runs on the host (the containers of its last heartbeat), each run linked."""
    rows = []
    for r in host.running if isinstance(host.running, list) else []:
        if not isinstance(r, dict):
            continue
        run = _int(r.get("run"))
        gpus = r.get("gpus")
        rows.append(
            {
                "run": run,
                "url": reverse("admin:runs_run_change", args=[run]) if run else "",
                "shard": r.get("shard"),
                "stage": r.get("stage") or "",
                "gpus": ", ".join(map(str, gpus)) if isinstance(gpus, list) and gpus else "-",
                "started": _when(r.get("started")),
            }
        )
    return rows


def cache_rows(host: Host) -> list[dict[str, Any]]:
    rows = []
    for c in host.cache if isinstance(host.cache, list) else []:
        if not isinstance(c, dict):
            continue
        size = _int(c.get("bytes"))
        rows.append(
            {
                "name": c.get("name") or "?",
                "version": c.get("version") or "",
                "manifest": str(c.get("manifest_sha256") or "")[:12],
                "size": _size(size) if size is not None else "-",
                "last_used": _when(c.get("last_used")),
                "in_use": bool(c.get("in_use")),
            }
        )
    return rows


def cache_bar(host: Host, compact: bool = False) -> SafeString:
    """The node cache's size against its budget (the list's form: a small bar, size / budget)."""
    if host.cache_budget_bytes:
        used, budget = _size(host.cache_bytes), _size(host.cache_budget_bytes)
        return bar(
            _pct(host.cache_bytes, host.cache_budget_bytes),
            f"{used} / {budget}" if compact else f"{used} of a {budget} budget",
            "cache sm" if compact else "cache",
        )
    return format_html('{} used <span class="hb-muted">(no budget reported)</span>', _size(host.cache_bytes))


@admin.register(Host)
class HostAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "status",
        "heartbeat_age",
        "active_slots",
        "gpu_bars",
        "cache_usage",
        "running_links",
    )
    fieldsets = (
        (None, {"fields": ["status", "heartbeat", "instance", "worker", "queue", "roots", "pool", "nvml"]}),
    )
    readonly_fields = ("status", "heartbeat", "instance", "worker", "queue", "roots", "pool", "nvml")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # hosts register themselves by reporting

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        host = self.get_object(request, object_id)
        if host is not None:
            extra_context = {
                **(extra_context or {}),
                "hb_host": host,
                "hb_gpus": gpu_rows(host),
                "hb_running": running_rows(host),
                "hb_cache": cache_rows(host),
                "hb_cache_bar": cache_bar(host),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="status")
    def status(self, obj: Host) -> str:
        if obj.silent:
            return mark_safe('<span class="hb-badge hb-silent" title="No heartbeat lately">silent</span>')
        return mark_safe('<span class="hb-badge hb-ok">live</span>')

    @admin.display(description="last heartbeat", ordering="last_seen")
    def heartbeat(self, obj: Host) -> str:
        return _when(obj.last_seen)

    @admin.display(description="last heartbeat", ordering="last_seen")
    def heartbeat_age(self, obj: Host) -> str:
        return format_html('<span title="{}">{}</span>', _when(obj.last_seen), _age(obj.last_seen) + " ago")

    @admin.display(description="pool (active / slots)")
    def pool(self, obj: Host) -> str:
        return f"{obj.active} / {obj.slots}"

    @admin.display(description="pool")
    def active_slots(self, obj: Host) -> str:
        return f"{obj.active} / {obj.slots}"

    @admin.display(description="dataset roots")
    def roots(self, obj: Host) -> str:
        roots = obj.dataset_roots if isinstance(obj.dataset_roots, list) else []
        if not roots:
            return "-"
        return format_html_join(BR, "<code>{}</code>", ((str(r),) for r in roots))

    @admin.display(description="GPUs (memory, utilization)")
    def gpu_bars(self, obj: Host) -> str:
        rows = gpu_rows(obj)
        if not rows:
            return "none (NVML absent)" if not obj.nvml else "none"
        return format_html_join(
            "",
            '<div class="hb-gpu-line" title="{}">{}: {} {}</div>',
            ((r["name"], r["index"], r["memory_short"], r["utilization_short"]) for r in rows),
        )

    @admin.display(description="cache")
    def cache_usage(self, obj: Host) -> str:
        return cache_bar(obj, compact=True)

    @admin.display(description="running")
    def running_links(self, obj: Host) -> str:
        rows = running_rows(obj)
        if not rows:
            return "idle"
        return format_html_join(
            BR,
            '<a href="{}">run {}</a> {}{}',
            (
                (r["url"], r["run"], r["stage"], f" shard {r['shard']}" if r["shard"] is not None else "")
                for r in rows
                if r["url"]
            ),
        )
