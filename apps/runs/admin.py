from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from apps.runs import admin_views
from apps.runs.comparisons import comparison_start
from apps.runs.models import Comparison, Evaluation, Experiment, Run
from apps.runs.rescore import run_rescore
from apps.runs.services import RunError, run_cancel, run_retry, run_start


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "model", "dataset", "owner", "public", "created_at")
    list_filter = ("public", "model", "dataset")
    search_fields = ("name",)
    actions = ("start_run",)

    @admin.action(description="Start a run of the selected experiments")
    def start_run(self, request: HttpRequest, queryset: QuerySet[Experiment]) -> TemplateResponse | None:
        """First a page that lists the experiments with the reuse checkbox (ticked), then, once
        confirmed, a run of each: ``reuse`` as the box was left."""
        if request.POST.get("confirm") != "yes":
            context = {
                **self.admin_site.each_context(request),
                "title": "Start a run of the selected experiments",
                "opts": self.model._meta,
                "experiments": queryset.order_by("pk").select_related("model", "dataset"),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/runs/experiment/start_run.html", context)
        reuse = request.POST.get("reuse") == "on"
        for experiment in queryset.order_by("pk"):
            try:
                run = run_start(experiment=experiment, user=request.user, reuse=reuse)
            except RunError as e:
                self.message_user(request, f"{experiment}: {e}", messages.ERROR)
            else:
                how = "reusing cached predictions" if reuse else "inferring every sample"
                self.message_user(request, f"Started run {run.pk} of {experiment}: {how}.")
        return None


class EvaluationInline(admin.TabularInline):
    """The run's rescores, newest first (its first evaluation is the run's own metrics above)."""

    model = Evaluation
    extra = 0
    can_delete = False
    verbose_name = "evaluation (rescore)"
    verbose_name_plural = "evaluations (rescores; the first one is the run's own metrics)"
    fields = (
        "id",
        "state",
        "metric_version",
        "eval_image",
        "eval_image_digest",
        "primary",
        "report_link",
        "error_reason",
        "created_at",
        "finished_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the "Re-score" action starts one

    @admin.display(description="primary metric")
    def primary(self, obj: Evaluation) -> str:
        doc = obj.metrics if isinstance(obj.metrics, dict) else {}
        name = doc.get("primary_metric")
        value = ((doc.get("metrics") or {}).get(name) or {}).get("value") if name else None
        return f"{name} {value:.4f}" if isinstance(value, int | float) else "-"

    @admin.display(description="report")
    def report_link(self, obj: Evaluation) -> str:
        return obj.report_uri or "-"


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    inlines = (EvaluationInline,)
    list_display = ("id", "experiment", "state", "progress_pct", "cer", "error_reason", "created_at")
    list_filter = ("state", "experiment__model", "experiment__dataset")
    search_fields = ("error_reason", "experiment__name")
    fieldsets = (
        (
            None,
            {
                "fields": [
                    "experiment_link",
                    "state_badge",
                    "progress_bar",
                    "error_reason",
                    "prediction_cache",
                    "retry_of",
                    "stage_attempt",
                    "created_by",
                    "created_at",
                    "started_at",
                    "finished_at",
                ]
            },
        ),
        (
            "Provenance",
            {
                "fields": [
                    "image_digest",
                    "manifest_sha256",
                    "metric_version",
                    "inference_s",
                    "gpu_seconds",
                ]
            },
        ),
    )
    readonly_fields = (
        "experiment_link",
        "state_badge",
        "progress_bar",
        "error_reason",
        "prediction_cache",
        "retry_of",
        "stage_attempt",
        "created_by",
        "created_at",
        "started_at",
        "finished_at",
        "image_digest",
        "manifest_sha256",
        "metric_version",
        "inference_s",
        "gpu_seconds",
    )
    actions = ("cancel_runs", "retry_runs", "rescore_runs", "compare_runs")

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

    def change_view(
        self,
        request: HttpRequest,
        object_id: str,
        form_url: str = "",
        extra_context: dict[str, Any] | None = None,
    ) -> HttpResponse:
        run = self.get_object(request, object_id)
        if run is not None:
            extra_context = {**(extra_context or {}), **admin_views.run_details(run)}
        return super().change_view(request, object_id, form_url, extra_context)

    @admin.display(description="experiment")
    def experiment_link(self, obj: Run) -> str:
        exp = obj.experiment
        return format_html(
            '<a href="{}">{}</a> &middot; model {} on dataset {}',
            reverse("admin:runs_experiment_change", args=[exp.pk]),
            exp.name,
            exp.model,
            exp.dataset,
        )

    @admin.display(description="state")
    def state_badge(self, obj: Run) -> str:
        return format_html('<span class="hb-badge hb-state-{}">{}</span>', obj.state, obj.get_state_display())

    @admin.display(description="progress")
    def progress_bar(self, obj: Run) -> str:
        pct = admin_views.percent(obj.progress_done, obj.progress_total)
        return format_html(
            '<span class="hb-bar" title="{}%"><span style="width:{}%"></span></span> {} / {} samples',
            pct,
            pct,
            obj.progress_done,
            obj.progress_total,
        )

    @admin.display(description="prediction cache")
    def prediction_cache(self, obj: Run) -> str:
        c = obj.cache_counts()
        reuse = "reuses other runs' predictions" if obj.reuse else "reuse off: infers every sample"
        return f"{c['hits']} hits, {c['misses']} misses ({c['resumed']} resumed) · {reuse}"

    @admin.display(description="progress")
    def progress_pct(self, obj: Run) -> str:
        return f"{obj.progress:.0%}"

    @admin.display(description="CER")
    def cer(self, obj: Run) -> str:
        if obj.metrics is None:
            return "-"
        try:
            return f"{obj.metrics['metrics']['cer']['value']:.4f}"
        except (TypeError, KeyError):
            return "-"

    @admin.action(description="Cancel the selected runs")
    def cancel_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        n = sum(run_cancel(run=run) for run in queryset)
        self.message_user(request, f"Cancelled {n} run(s).")

    def _each_run(
        self,
        request: HttpRequest,
        queryset: QuerySet[Run],
        start: Callable[[Run], Any],
        said: Callable[[Any, Run], str],
    ) -> None:
        """Start something for each selected run; a refusal is that run's error, the others go on."""
        for run in queryset.order_by("pk"):
            try:
                made = start(run)
            except RunError as e:
                self.message_user(request, f"Run {run.pk}: {e}", messages.ERROR)
            else:
                self.message_user(request, said(made, run))

    @admin.action(description="Retry the selected failed or cancelled runs (reusing what they predicted)")
    def retry_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._each_run(
            request,
            queryset,
            lambda run: run_retry(run=run, user=request.user),
            lambda new, run: f"Run {new.pk} retries run {run.pk}.",
        )

    @admin.action(description="Re-score the selected succeeded runs (today's eval image, no inference)")
    def rescore_runs(self, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        self._each_run(
            request,
            queryset,
            lambda run: run_rescore(run=run, user=request.user),
            lambda ev, run: f"Evaluation {ev.pk} re-scores run {run.pk}.",
        )

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
    list_display = ("id", "run_ids", "dataset", "state", "report_link", "created_at")
    list_filter = ("state", "dataset")
    readonly_fields = (
        "run_ids",
        "dataset",
        "state",
        "error_reason",
        "report_link",
        "created_by",
        "created_at",
        "finished_at",
    )
    exclude = ("report_uri",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # select runs in the run list and use the "Compare" action

    @admin.display(description="report")
    def report_link(self, obj: Comparison) -> str:
        if not obj.report_uri:
            return "-"
        return format_html('<a href="/api/v1/comparisons/{}/report/" target="_blank">open report</a>', obj.pk)
