"""The inputs: where they are (env overrides for tests), a run's files, and the facts read from them."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hb_stats


def _path(env: str, default: str) -> Path:
    return Path(os.environ.get(env, default))


def data_dir() -> Path:
    return _path("HB_DATA_DIR", "/data")


def input_dir() -> Path:
    return Path(os.environ.get("HB_INPUT_DIR", str(_path("HB_JOB_DIR", "/job") / "input")))


def output_dir() -> Path:
    return Path(os.environ.get("HB_OUTPUT_DIR", str(_path("HB_JOB_DIR", "/job") / "output")))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; blank, torn and non-object lines are skipped."""
    rows: list[dict[str, Any]] = []
    # No file: no rows (suppress() is entered first, so it covers the open()).
    with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
    return rows


def num(value: object) -> float | None:
    """A finite-or-infinite number as float; None for bool, NaN and anything not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return None if math.isnan(f) else f


@dataclass
class RunData:
    key: str
    metrics: dict[str, Any]
    run: dict[str, Any]
    per_sample: list[dict[str, Any]]
    predictions: list[dict[str, Any]]

    @property
    def model_name(self) -> Any:
        model = self.run.get("model")
        return model.get("name") if isinstance(model, dict) else model

    @property
    def label(self) -> str:
        model = self.model_name
        rid = self.run.get("run_id")
        parts = [str(x) for x in (model, f"run {rid}" if rid is not None else None) if x]
        return " · ".join(parts) or f"run {self.key}"

    @property
    def metric_values(self) -> dict[str, dict[str, Any]]:
        m = self.metrics.get("metrics")
        return {k: v for k, v in m.items() if isinstance(v, dict)} if isinstance(m, dict) else {}


def load_run(inp: Path, key: str = "") -> RunData:
    metrics = read_json(inp / "metrics.json")
    if not isinstance(metrics, dict):
        raise ValueError(f"{inp / 'metrics.json'}: missing or not a JSON object")
    run = read_json(inp / "run.json") or {}
    if not isinstance(run, dict):
        run = {"run": run}
    return RunData(
        key=key,
        metrics=metrics,
        run=run,
        per_sample=read_jsonl(inp / "per_sample.jsonl"),
        predictions=read_jsonl(inp / "predictions.jsonl"),
    )


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders numbers numerically: 0, 1, 2, 10."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def load_runs(runs_dir: Path) -> list[RunData]:
    """The runs of a comparison, in natural order of their directories (the first is the baseline)."""
    dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name))
    runs = [load_run(d, d.name) for d in dirs]
    if len(runs) < 2:
        raise ValueError(f"{runs_dir}: a comparison needs at least two run directories, found {len(runs)}")
    return runs


def dataset_label(data: RunData) -> str:
    ds = data.metrics.get("dataset")
    if isinstance(ds, dict) and ds.get("name"):
        return f"{ds.get('name')}@{ds.get('version')}"
    value = data.run.get("dataset")
    return str(value.get("name") if isinstance(value, dict) else value or "")


def check_comparable(runs: list[RunData]) -> None:
    """Refuse runs that would mix datasets or metric versions (never silently)."""
    problems = []
    for what, get in (
        ("dataset", dataset_label),
        ("metric_version", lambda r: str(r.metrics.get("metric_version"))),
        ("task", lambda r: str(r.metrics.get("task"))),
        ("manifest_sha256", lambda r: str(r.run.get("manifest_sha256") or "")),
    ):
        values = {get(r) for r in runs}
        if what == "manifest_sha256":
            values.discard("")
        if len(values) > 1:
            problems.append(f"{what} differs: " + ", ".join(f"{r.label}={get(r)!s}" for r in runs))
    if problems:
        raise ValueError("runs are not comparable: " + "; ".join(problems))


def primary_metric(metrics: dict[str, Any]) -> tuple[str, bool]:
    """(metric used to rank samples, True when lower is better)."""
    names = metrics.get("metrics", {}) if isinstance(metrics, dict) else {}
    declared = metrics.get("primary_metric") if isinstance(metrics, dict) else None
    if isinstance(declared, str) and declared in names:
        return declared, hb_stats.lower_is_better(declared)
    for name in ("cer", "anls"):
        if name in names:
            return name, hb_stats.lower_is_better(name)
    first = next(iter(names), "cer")
    return first, hb_stats.lower_is_better(first)
