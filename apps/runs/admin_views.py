"""Staff pages in the admin: the leaderboard and a run's per-sample browser."""

from __future__ import annotations

import mimetypes
from itertools import islice

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse

from apps.catalog.models import Dataset
from apps.runs.models import Run
from apps.runs.selectors import PRIMARY_METRIC, dataset_file, leaderboard, run_samples
from worker import contract

PAGE = 50


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
