"""Staff pages in the admin: the leaderboard, a run's per-sample browser, and what a run's page shows."""

from __future__ import annotations

import json
import mimetypes
from itertools import islice
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse

from apps.catalog.models import Dataset
from apps.hosts.models import Host
from apps.runs import artifacts
from apps.runs.models import Run, RunEvent
from apps.runs.selectors import PRIMARY_METRIC, dataset_file, leaderboard, run_artifacts, run_samples
from worker import contract

PAGE = 50


def _bytes(n: object) -> str:
    if not isinstance(n, int | float):
        return "?"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _pretty(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def _number(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def percent(done: int, total: int) -> int:
    return max(0, min(100, round(100 * done / total))) if total else 0


def event_summary(event: RunEvent) -> str:
    """One line for an event's data where a person wants one (a dataset sync's latest tick), else ""."""
    data = event.data if isinstance(event.data, dict) else {}
    if event.kind == "progress" and event.stage == "sync" and data:
        # The latest tick of this shard's dataset sync (event_record keeps one row per sync).
        return (
            f"{data.get('phase', '?')}: "
            f"{data.get('files_done', '?')}/{data.get('files_total', '?')} files, "
            f"{_bytes(data.get('bytes_done'))} of {_bytes(data.get('bytes_total'))}, "
            f"fetched {data.get('fetched_files', 0)} files ({_bytes(data.get('fetched_bytes', 0))}) "
            f"at {_bytes(data.get('rate_bps', 0))}/s"
        )
    return ""


def metric_rows(metrics: object) -> list[dict[str, object]]:
    """The rows of a run's metrics table: name, value, 95 % CI, direction; the primary metric first."""
    doc = metrics if isinstance(metrics, dict) else {}
    found = doc.get("metrics")
    found = found if isinstance(found, dict) else {}
    primary = doc.get("primary_metric")
    declared = doc.get("lower_is_better")
    lower = set(contract.LOWER_IS_BETTER) | {str(n) for n in (declared if isinstance(declared, list) else [])}
    rows = []
    for name, m in sorted(found.items(), key=lambda kv: (kv[0] != primary, kv[0])):
        m = m if isinstance(m, dict) else {}
        ci = m.get("ci95")
        ci_text = (
            f"[{_number(ci[0])}, {_number(ci[1])}]" if isinstance(ci, list | tuple) and len(ci) == 2 else "-"
        )
        rows.append(
            {
                "name": name,
                "primary": name == primary,
                "value": _number(m.get("value")),
                "ci": ci_text,
                "lower": name in lower,
            }
        )
    return rows


EVENTS_SHOWN = 500  # the newest events on a run's page; the API and the report have them all


def run_details(run: Run) -> dict[str, Any]:
    """What a run's admin page shows under its fields: metrics, shards, timeline, links, spec."""
    hosts = {h.name: h.pk for h in Host.objects.filter(name__in={s.host for s in run.shards.all()})}
    shards = [
        {
            "shard": s,
            "pct": percent(s.done, s.total),
            "host_pk": hosts.get(s.host),
        }
        for s in run.shards.order_by("index")
    ]
    total = run.events.count()
    events = list(run.events.order_by("-created_at", "-id")[:EVENTS_SHOWN])[::-1]
    event_hosts = {h.name: h.pk for h in Host.objects.filter(name__in={e.host for e in events if e.host})}
    doc = run.metrics if isinstance(run.metrics, dict) else {}
    summary = [
        (label, doc[key])
        for label, key in (
            ("samples", "n"),
            ("errors", "errors"),
            ("missing", "missing"),
            ("no reference", "no_reference"),
            ("duplicates", "duplicates"),
            ("unknown ids", "unknown_ids"),
        )
        if isinstance(doc.get(key), int)
    ]
    try:
        found = run_artifacts(run=run)
        artifacts_error = ""
    except artifacts.ArtifactError as e:
        found, artifacts_error = [], str(e)
    return {
        "hb_run": run,
        "hb_metrics": metric_rows(run.metrics),
        "hb_metrics_summary": summary,
        "hb_latency": doc.get("latency_ms") if isinstance(doc.get("latency_ms"), dict) else None,
        "hb_shards": shards,
        "hb_events": [
            {
                "event": e,
                "summary": event_summary(e),
                "data": _pretty(e.data) if e.data not in (None, {}, []) else "",
                "host_pk": event_hosts.get(e.host),
            }
            for e in events
        ],
        "hb_events_total": total,
        "hb_events_hidden": max(0, total - len(events)),
        "hb_artifacts": [
            {"name": a.name, "url": reverse("run-artifact", kwargs={"pk": run.pk, "name": a.name})}
            for a in found
        ],
        "hb_artifacts_error": artifacts_error,
        "hb_artifacts_list": reverse("run-artifacts", kwargs={"pk": run.pk}),
        "hb_report": reverse("run-report", kwargs={"pk": run.pk}) if run.report_uri else "",
        "hb_samples": reverse("admin:runs_run_samples", args=[run.pk]) if run.per_sample_uri else "",
        "hb_spec": _pretty(run.spec),
        "hb_params": _pretty(run.experiment.params),
        "hb_prompt": run.experiment.prompt,
    }


def leaderboard_view(request: HttpRequest) -> HttpResponse:
    """Boards filtered by dataset version and task, ranked by the primary metric or a chosen one."""
    datasets = Dataset.objects.all()
    chosen = request.GET.get("dataset", "")
    task = request.GET.get("task", "")
    metric = request.GET.get("metric", "")
    if chosen.isdigit():
        datasets = datasets.filter(pk=int(chosen))
    if task in contract.TASK_METRICS:
        datasets = datasets.filter(task=task)
    metrics = [(t, names) for t, names in contract.TASK_METRICS.items() if not task or t == task]
    if metric and not any(metric in names for _, names in metrics):
        messages.error(request, f"{metric!r} is no metric of the chosen task: ranked by the primary one.")
        metric = ""
    context = {
        **admin.site.each_context(request),
        "title": "Leaderboard",
        "boards": leaderboard(datasets=datasets, metric=metric or None),
        "all_datasets": Dataset.objects.all(),
        "chosen": chosen,
        "task": task,
        "metric": metric,
        "metric_choices": metrics,
    }
    return TemplateResponse(request, "admin/hyperbench/leaderboard.html", context)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _truth(row: dict[str, object]) -> str:
    if row.get("reference") is not None:
        return str(row["reference"])
    answers = row.get("answers")
    return " | ".join(map(str, answers)) if isinstance(answers, list) else ""


def run_samples_view(request: HttpRequest, run_id: int) -> HttpResponse:
    run = get_object_or_404(Run.objects.select_related("experiment__dataset", "experiment__model"), pk=run_id)
    metric = PRIMARY_METRIC.get(run.experiment.dataset.task, ("cer", True))[0]
    metric = request.GET.get("metric", metric)
    low, high = _float(request.GET.get("min")), _float(request.GET.get("max"))
    errors_only = request.GET.get("errors") == "1"
    page = max(1, int(request.GET.get("page", "1") or 1)) if request.GET.get("page", "1").isdigit() else 1
    rows = list(
        islice(
            run_samples(run=run, metric=metric, low=low, high=high, errors_only=errors_only),
            (page - 1) * PAGE,
            page * PAGE + 1,
        )
    )
    context = {
        **admin.site.each_context(request),
        "title": f"Samples of run {run.pk}",
        "run": run,
        "metric": metric,
        "rows": [{**r, "score": r.get(metric), "truth": _truth(r)} for r in rows[:PAGE]],
        "has_next": len(rows) > PAGE,
        "page": page,
        "filters": {
            "min": request.GET.get("min", ""),
            "max": request.GET.get("max", ""),
            "errors": errors_only,
        },
        "query": request.GET.urlencode(),
    }
    return TemplateResponse(request, "admin/hyperbench/samples.html", context)


def sample_image_view(request: HttpRequest, run_id: int) -> FileResponse:
    if not request.user.is_staff:
        raise PermissionDenied
    run = get_object_or_404(Run.objects.select_related("experiment__dataset"), pk=run_id)
    path = dataset_file(run, request.GET.get("path", ""))
    if path is None:
        raise Http404("No such image in this run's dataset.")
    content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if not content_type.startswith("image/"):
        raise Http404("Not an image.")
    return FileResponse(path.open("rb"), content_type=content_type)
