from __future__ import annotations

import json

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from apps.runs import admin_views
from apps.runs.models import Comparison, Experiment, Run, RunEvent, RunShard
from apps.runs.services import RunError, comparison_start, run_cancel, run_start


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ["name", "model", "dataset", "owner", "created_at"]
    list_filter = ["model", "dataset"]
    search_fields = ["name"]
    actions = ["start_run"]

    @admin.action(description="Start a run of the selected experiments")
    def start_run(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> None:
        for experiment in queryset:
            try:
                run = run_start(experiment=experiment, user=request.user)
            except RunError as e:
                self.message_user(request, f"{experiment}: {e}", messages.ERROR)
            else:
                self.message_user(request, f"Started run {run.pk} of {experiment}.")


class RunShardInline(admin.TabularInline):
    model = RunShard
    extra = 0
    can_delete = False
    readonly_fields = ["index", "attempt", "state", "host", "done", "total", "errors", "predictions_uri"]


def _bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class RunEventInline(admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "kind", "stage", "host", "shard", "message", "details"]
    fields = readonly_fields

    @admin.display(description="data")
    def details(self, obj: RunEvent) -> str:
        data = obj.data or {}
        if obj.kind == "progress" and obj.stage == "sync":
            # The latest tick of this shard's dataset sync (event_record keeps one row per sync).
            return (
                f"{data.get('phase', '?')}: "
                f"{data.get('files_done', '?')}/{data.get('files_total', '?')} files, "
                f"{_bytes(data.get('bytes_done'))} of {_bytes(data.get('bytes_total'))}, "
                f"fetched {data.get('fetched_files', 0)} files ({_bytes(data.get('fetched_bytes', 0))}) "
                f"at {_bytes(data.get('rate_bps', 0))}/s"
            )
        if not data:
            return "-"
        text = json.dumps(data, sort_keys=True, default=str)
        return text if len(text) <= 300 else text[:300] + " ..."


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "experiment", "state", "progress_pct", "cer", "error_reason", "created_at"]
    list_filter = ["state", "experiment__model", "experiment__dataset"]
    search_fields = ["error_reason", "experiment__name"]
    readonly_fields = [
        "experiment",
        "state",
        "progress_done",
        "progress_total",
        "error_reason",
        "metrics",
        "image_digest",
        "manifest_sha256",
        "metric_version",
        "inference_s",
        "gpu_seconds",
        "predictions_uri",
        "metrics_uri",
        "per_sample_uri",
        "report_link",
        "samples_link",
        "spec",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
    ]
    exclude = ["report_uri", "shard_count"]
    inlines = [RunShardInline, RunEventInline]
    actions = ["cancel_runs", "compare_runs"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # runs start from an experiment (action) or the API

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        return [
            path("leaderboard/", view(admin_views.leaderboard_view), name="runs_leaderboard"),
            path("<int:run_id>/samples/", view(admin_views.run_samples_view), name="runs_run_samples"),
            path(
                "<int:run_id>/samples/image/",
                view(admin_views.sample_image_view),
                name="runs_run_sample_image",
            ),
            *super().get_urls(),
        ]

    @admin.display(description="samples")
    def samples_link(self, obj: Run) -> str:
        if not obj.per_sample_uri:
            return "-"
        return format_html(
            '<a href="{}">browse samples</a>', reverse("admin:runs_run_samples", args=[obj.pk])
        )

    @admin.display(description="progress")
    def progress_pct(self, obj: Run) -> str:
        return f"{obj.progress:.0%}"

    @admin.display(description="CER")
    def cer(self, obj: Run) -> str:
        try:
            return f"{obj.metrics['metrics']['cer']['value']:.4f}"
        except (TypeError, KeyError):
            return "-"

    @admin.display(description="report")
    def report_link(self, obj: Run) -> str:
        if not obj.report_uri:
            return "-"
        return format_html('<a href="/api/v1/runs/{}/report/" target="_blank">open report</a>', obj.pk)

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        n = sum(run_cancel(run=run) for run in queryset)
        self.message_user(request, f"Cancelled {n} run(s).")

    @admin.action(description="Compare the selected runs (same dataset version)")
    def compare_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        try:
            cmp = comparison_start(runs=list(queryset.order_by("pk")), user=request.user)
        except RunError as e:
            self.message_user(request, str(e), messages.ERROR)
        else:
            url = reverse("admin:runs_comparison_change", args=[cmp.pk])
            self.message_user(request, format_html('Queued <a href="{}">{}</a>.', url, cmp))


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ["id", "run_ids", "dataset", "state", "report_link", "created_at"]
    list_filter = ["state", "dataset"]
    readonly_fields = [
        "run_ids",
        "dataset",
        "state",
        "error_reason",
        "report_link",
        "created_by",
        "created_at",
        "finished_at",
    ]
    exclude = ["report_uri"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # select runs in the run list and use the "Compare" action

    @admin.display(description="report")
    def report_link(self, obj: Comparison) -> str:
        if not obj.report_uri:
            return "-"
        return format_html('<a href="/api/v1/comparisons/{}/report/" target="_blank">open report</a>', obj.pk)
