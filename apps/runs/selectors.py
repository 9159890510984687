"""Reads that span relations: the leaderboard and a run's per-sample scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.db.models import QuerySet

from apps.catalog.models import Dataset
from apps.runs import artifacts
from apps.runs.models import Run
from worker import contract

# The metric a task is ranked by, and whether lower is better.
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {"ocr": ("cer", True), "vqa": ("anls", False)}


@dataclass
class LeaderboardEntry:
    rank: int | None  # None: not ranked (a different metric version)
    run: Run
    value: float | None
    ci95: list[float] | None
    metrics: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        exp = self.run.experiment
        return {
            "rank": self.rank,
            "model": exp.model.name,
            "experiment": exp.name,
            "experiment_id": exp.pk,
            "run": self.run.pk,
            "value": self.value,
            "ci95": self.ci95,
            "metrics": self.metrics,
            "metric_version": self.run.metric_version,
            "samples": self.run.progress_total,
            "errors": (self.run.metrics or {}).get("errors"),
            "samples_per_s": self.run.samples_per_s,
            "gpu_seconds": round(self.run.gpu_seconds, 2),
            "image_digest": self.run.image_digest,
            "finished_at": self.run.finished_at.isoformat() if self.run.finished_at else None,
        }


@dataclass
class Leaderboard:
    dataset: Dataset
    metric: str
    lower_is_better: bool
    metric_version: str
    entries: list[LeaderboardEntry] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "dataset": {
                "id": d.pk,
                "name": d.name,
                "version": d.version,
                "task": d.task,
                "manifest_sha256": d.manifest_sha256,
                "samples": d.sample_count,
            },
            "metric": self.metric,
            "lower_is_better": self.lower_is_better,
            "metric_version": self.metric_version,
            "entries": [e.as_dict() for e in self.entries],
        }


def _metric(run: Run, name: str) -> tuple[float | None, list[float] | None]:
    m = ((run.metrics or {}).get("metrics") or {}).get(name) or {}
    value = m.get("value")
    return (float(value) if isinstance(value, int | float) else None), m.get("ci95")


def leaderboard(*, datasets: QuerySet[Dataset], metric: str | None = None) -> list[Leaderboard]:
    """One board per dataset version: each experiment's latest succeeded run, ranked.

    Ranked by ``metric`` when given (then only the datasets whose task has that
    metric get a board), else by the primary metric the eval recorded for the
    dataset version (its dataset.json may choose one; by default the task's
    first metric); the direction comes from ``contract.LOWER_IS_BETTER``. Only
    runs whose metrics share the newest metric version are ranked; runs scored
    by another version, or lacking the metric, are listed after them with
    ``rank=None``, never mixed into the ranking.

    Raises:
        ValueError: ``metric`` is no metric of any task.
    """
    if metric and not any(metric in names for names in contract.TASK_METRICS.values()):
        raise ValueError(f"unknown metric {metric!r}")
    boards = []
    for dataset in datasets:
        names = contract.TASK_METRICS.get(dataset.task, ("cer",))
        if metric and metric not in names:
            continue  # a metric of another task: that board has nothing to rank by
        runs = (
            Run.objects.filter(
                experiment__dataset=dataset,
                state=Run.State.SUCCEEDED,
                manifest_sha256=dataset.manifest_sha256,
            )
            .select_related("experiment__model")
            .order_by("experiment_id", "-finished_at")
        )
        latest: dict[int, Run] = {}
        for run in runs:
            latest.setdefault(run.experiment_id, run)
        if not latest:
            continue
        newest = max((r.metric_version for r in latest.values()), key=_version_key)
        name = metric or _recorded_primary([r for r in latest.values() if r.metric_version == newest], names)
        lower = name in contract.LOWER_IS_BETTER
        current = [
            r for r in latest.values() if r.metric_version == newest and _metric(r, name)[0] is not None
        ]
        others = [r for r in latest.values() if r not in current]
        current.sort(key=lambda r: (_metric(r, name)[0] or 0.0) * (1 if lower else -1))
        board = Leaderboard(dataset=dataset, metric=name, lower_is_better=lower, metric_version=newest)
        for i, run in enumerate(current, 1):
            board.entries.append(_entry(i, run, name))
        board.entries.extend(_entry(None, run, name) for run in others)
        boards.append(board)
    return boards


def _recorded_primary(runs: list[Run], names: tuple[str, ...]) -> str:
    """The primary metric in the newest run's metrics.json, if it is one of the task's; else the task's."""
    for run in sorted(runs, key=lambda r: r.finished_at or r.created_at, reverse=True):
        recorded = (run.metrics or {}).get("primary_metric")
        if recorded in names:
            return str(recorded)
    return names[0]


def _entry(rank: int | None, run: Run, name: str) -> LeaderboardEntry:
    value, ci = _metric(run, name)
    flat = {k: v.get("value") for k, v in ((run.metrics or {}).get("metrics") or {}).items()}
    return LeaderboardEntry(rank=rank, run=run, value=value, ci95=ci, metrics=flat)


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split(".")) if v else (0,)


def artifact_path(uri: str) -> Path | None:
    """The local path of a ``file://`` artifact under the configured store, else None (s3:// too)."""
    loc = artifacts.locate(uri) if uri else None
    if loc is None or loc.path is None:
        return None
    return loc.path if loc.path.is_file() else None


@dataclass(frozen=True)
class RunArtifact:
    """One downloadable artifact of a run: a stable name (used in URLs) and where it lives."""

    name: str
    location: artifacts.Location


def run_artifacts(*, run: Run) -> list[RunArtifact]:
    """The run's artifacts a person may download, by name.

    The run's outputs as the control side recorded them (predictions, metrics,
    per-sample scores, report), each shard's accepted predictions (the attempt
    the control side accepted, ``shards/<k>/predictions``), and every container
    log under the run's ``logs/`` (``logs/infer/shard-0/attempt-1.log``...; logs
    of failed attempts included, they are what a person wants to read). Only URIs
    the configured store may serve are listed.
    """
    found: list[tuple[str, str]] = [
        (name, uri)
        for name, uri in (
            ("predictions", run.predictions_uri),
            ("metrics", run.metrics_uri),
            ("per_sample", run.per_sample_uri),
            ("report", run.report_uri),
        )
        if uri
    ]
    found += [
        (f"shards/{shard.index}/predictions", shard.predictions_uri)
        for shard in run.shards.all()
        if shard.predictions_uri
    ]
    base = str((run.spec or {}).get("artifacts_uri") or "")
    if base:
        base = base.rstrip("/") + "/"
        try:
            logs = artifacts.list_under(base + contract.LOGS_PREFIX)
        except artifacts.ArtifactError:
            logs = []  # the store is unreachable: still list what the DB knows
        found += [(uri[len(base) :], uri) for uri in logs if uri.startswith(base)]
    out = []
    for name, uri in found:
        loc = artifacts.locate(uri)
        if loc is not None:
            out.append(RunArtifact(name=name, location=loc))
    return out


def run_samples(
    *, run: Run, metric: str, low: float | None = None, high: float | None = None, errors_only: bool = False
) -> Iterator[dict[str, Any]]:
    """Stream a run's per-sample rows (from either store), filtered by score range or error."""
    if not run.per_sample_uri:
        return
    try:
        lines = artifacts.iter_lines(run.per_sample_uri)
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            if errors_only and not (row.get("error") or row.get("missing")):
                continue
            score = row.get(metric)
            if low is not None and (score is None or score < low):
                continue
            if high is not None and (score is None or score > high):
                continue
            yield row
    except artifacts.ArtifactError:
        return


def dataset_file(run: Run, relative: str) -> Path | None:
    """A file of the run's dataset version (file:// only), resolved safely under its root."""
    parsed = urlparse(run.experiment.dataset.source_uri)
    if parsed.scheme != "file" or not relative or relative.startswith("/") or "\\" in relative:
        return None
    root = Path(unquote(parsed.path)).resolve()
    path = (root / relative).resolve()
    return path if path.is_relative_to(root) and path.is_file() else None
