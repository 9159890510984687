"""Reads that span relations: the leaderboard and a run's per-sample scores."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.db.models import Q, QuerySet

from apps.catalog.models import Dataset
from apps.runs import artifacts
from apps.runs.models import Evaluation, Experiment, Run
from worker import contract

# The metric a task is ranked by, and whether lower is better.
PRIMARY_METRIC: dict[str, tuple[str, bool]] = {
    task: (names[0], names[0] in contract.LOWER_IS_BETTER) for task, names in contract.TASK_METRICS.items()
}


@dataclass(frozen=True)
class Scoring:
    """One evaluation of a run: its own first one (``evaluation`` None) or a rescore's."""

    metric_version: str
    metrics: dict[str, Any]
    evaluation: int | None = None


@dataclass
class LeaderboardEntry:
    rank: int | None  # None: not ranked (a different metric version)
    run: Run
    value: float | None
    ci95: list[float] | None
    metrics: dict[str, Any]
    scoring: Scoring | None = None

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
            "metric_version": self.scoring.metric_version if self.scoring else self.run.metric_version,
            "evaluation": self.scoring.evaluation if self.scoring else None,
            "samples": self.run.progress_total,
            "errors": ((self.scoring.metrics if self.scoring else self.run.metrics) or {}).get("errors"),
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


def visible_experiments(user: Any) -> QuerySet[Experiment]:
    """The experiments ``user`` may see: staff see all, everyone else their own and public ones.

    The one visibility rule of experiments and everything under them (runs, the
    leaderboard's entries): the API's views and the leaderboard all start here.
    """
    qs = Experiment.objects.select_related("model", "dataset", "owner")
    if user is not None and user.is_authenticated and user.is_staff:
        return qs
    if user is None or not user.is_authenticated:
        return qs.none()
    return qs.filter(Q(owner=user) | Q(public=True))


def owned_experiments(user: Any) -> QuerySet[Experiment]:
    """The experiments ``user`` may act on (start or cancel runs): staff all, everyone else their own."""
    qs = Experiment.objects.select_related("model", "dataset", "owner")
    if user is not None and user.is_authenticated and user.is_staff:
        return qs
    if user is None or not user.is_authenticated:
        return qs.none()
    return qs.filter(owner=user)


def visible_runs(user: Any) -> QuerySet[Run]:
    """The runs ``user`` may see: those of ``visible_experiments(user)``."""
    qs = Run.objects.select_related("experiment__model", "experiment__dataset")
    if user is not None and user.is_authenticated and user.is_staff:
        return qs
    return qs.filter(experiment__in=visible_experiments(user).values("pk"))


def _metric(scoring: Scoring, name: str) -> tuple[float | None, list[float] | None]:
    m = ((scoring.metrics or {}).get("metrics") or {}).get(name) or {}
    value = m.get("value")
    return (float(value) if isinstance(value, int | float) else None), m.get("ci95")


def leaderboard(
    *, datasets: QuerySet[Dataset], metric: str | None = None, runs: QuerySet[Run] | None = None
) -> list[Leaderboard]:
    """One board per dataset version: each experiment's latest succeeded run, ranked.

    ``runs`` limits the boards to those runs: the API passes ``visible_runs(user)``,
    so a user sees only the entries of experiments they may see; None: all runs
    (the staff admin).

    Ranked by ``metric`` when given (then only the datasets whose task has that
    metric get a board), else by the primary metric the eval recorded for the
    dataset version (its dataset.json may choose one; by default the task's
    first metric); the direction comes from ``contract.LOWER_IS_BETTER``. A run is
    scored by its newest evaluation of the newest metric version among the board's
    evaluations (a rescore, ``Evaluation``, or its own first one). Only
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
        candidates = (
            (Run.objects.all() if runs is None else runs)
            .filter(
                experiment__dataset=dataset,
                state=Run.State.SUCCEEDED,
                manifest_sha256=dataset.manifest_sha256,
            )
            .select_related("experiment__model")
            .order_by("experiment_id", "-finished_at")
        )
        latest: dict[int, Run] = {}
        for run in candidates:
            latest.setdefault(run.experiment_id, run)
        if not latest:
            continue
        scorings = run_scorings(list(latest.values()))
        newest = max((x.metric_version for xs in scorings.values() for x in xs), key=version_key)
        # Each run on its newest evaluation of the newest metric version; else on its newest one.
        chosen = {
            pk: next((x for x in xs if x.metric_version == newest), xs[0]) for pk, xs in scorings.items()
        }
        name = metric or _recorded_primary(
            [r for r in latest.values() if chosen[r.pk].metric_version == newest], chosen, names
        )
        lower = name in contract.LOWER_IS_BETTER
        current = [
            r
            for r in latest.values()
            if chosen[r.pk].metric_version == newest and _metric(chosen[r.pk], name)[0] is not None
        ]
        others = [r for r in latest.values() if r not in current]
        current.sort(key=lambda r: (_metric(chosen[r.pk], name)[0] or 0.0) * (1 if lower else -1))
        board = Leaderboard(dataset=dataset, metric=name, lower_is_better=lower, metric_version=newest)
        for i, run in enumerate(current, 1):
            board.entries.append(_entry(i, run, chosen[run.pk], name))
        board.entries.extend(_entry(None, run, chosen[run.pk], name) for run in others)
        boards.append(board)
    return boards


def run_scorings(runs: list[Run]) -> dict[int, list[Scoring]]:
    """Every evaluation of each run, newest first: its succeeded rescores, then its own first one."""
    out: dict[int, list[Scoring]] = {r.pk: [] for r in runs}
    rows = (
        Evaluation.objects.filter(run_id__in=list(out), state=Evaluation.State.SUCCEEDED)
        .order_by("-created_at", "-id")
        .values_list("run_id", "metric_version", "metrics", "pk")
    )
    for run_id, version, metrics, pk in rows:
        out[run_id].append(Scoring(version, metrics or {}, pk))
    for r in runs:
        out[r.pk].append(Scoring(r.metric_version, r.metrics or {}))
    return out


def _recorded_primary(runs: list[Run], chosen: dict[int, Scoring], names: tuple[str, ...]) -> str:
    """The primary metric in the newest run's metrics.json, if it is one of the task's; else the task's."""
    for run in sorted(runs, key=lambda r: r.finished_at or r.created_at, reverse=True):
        recorded = (chosen[run.pk].metrics or {}).get("primary_metric")
        if recorded in names:
            return str(recorded)
    return names[0]


def _entry(rank: int | None, run: Run, scoring: Scoring, name: str) -> LeaderboardEntry:
    value, ci = _metric(scoring, name)
    flat = {k: v.get("value") for k, v in ((scoring.metrics or {}).get("metrics") or {}).items()}
    return LeaderboardEntry(rank=rank, run=run, value=value, ci95=ci, metrics=flat, scoring=scoring)


def version_key(v: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in v.split(".")) if v else (0,)


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


def run_timings(run: Run) -> dict[str, Any]:
    """The run's timing facts for the report, from the event log and the run's counters.

    ``sync_s``: dataset sync seconds summed over the shards (each shard's
    ``shard_succeeded`` event carries its own; the first report of a shard
    counts, as in event_record). ``inference_s``: wall clock from the first
    shard's start to the last shard's end (the syncs happen inside it).
    ``container_s``: the model containers' run time summed over shards.
    ``evaluation_s``: wall clock of the evaluation. ``gpu_seconds``: container
    time x GPUs held, summed over shards.
    """
    firsts: dict[tuple[str, str], Any] = {}
    shard_end: dict[int | None, Any] = {}
    sync: dict[int | None, float] = {}
    kinds = ["started", "shard_succeeded", "evaluated"]
    for ev in run.events.filter(kind__in=kinds).order_by("created_at", "id"):
        firsts.setdefault((ev.kind, ev.stage), ev.created_at)
        if ev.kind == "shard_succeeded" and ev.shard not in shard_end:
            # Only the first report of a shard's end counts: later ones are re-deliveries.
            shard_end[ev.shard] = ev.created_at
            seconds = (ev.data or {}).get("sync_s")
            if isinstance(seconds, int | float):
                sync[ev.shard] = float(seconds)
    out: dict[str, Any] = {}
    if sync:
        out["sync_s"] = round(sum(sync.values()), 3)
    infer_start = firsts.get(("started", "infer"))
    if infer_start and shard_end:
        out["inference_s"] = round((max(shard_end.values()) - infer_start).total_seconds(), 2)
        if out["inference_s"] > 0:
            out["throughput_samples_per_s"] = round(run.progress_total / out["inference_s"], 2)
    if run.inference_s:
        out["container_s"] = round(run.inference_s, 2)
    eval_start, eval_end = firsts.get(("started", "evaluate")), firsts.get(("evaluated", "evaluate"))
    if eval_start and eval_end:
        out["evaluation_s"] = round((eval_end - eval_start).total_seconds(), 2)
    out["gpu_seconds"] = round(run.gpu_seconds, 2)
    return out
