"""Aggregates, bootstrap confidence intervals and the paired bootstrap test.

Standard library only: the eval image (aggregates + CIs) and the report image
(comparison of runs) import this same file, so a statistic is computed one way
everywhere. Every aggregate is defined over the per-sample rows that the eval
image writes to per_sample.jsonl:

- a *ratio* aggregate (corpus CER / WER) = sum(numerator key) / sum(denominator key);
- a *mean* aggregate = the mean of one per-sample key.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 20240601
BOOTSTRAP_METHOD = (
    "percentile bootstrap: resamples of the samples drawn with replacement "
    "(random.Random(seed).choices), one shared index draw per resample for every metric; "
    "each statistic recomputed exactly as its point value; ci95 = 2.5th and 97.5th percentiles "
    "(linear interpolation)"
)

# name -> ("ratio", numerator key, denominator key) | ("mean", per-sample key)
AGGREGATES: dict[str, tuple[str, ...]] = {
    "cer": ("ratio", "char_edits", "char_ref_len"),
    "wer": ("ratio", "word_edits", "word_ref_len"),
    "cer_mean": ("mean", "cer"),
    "wer_mean": ("mean", "wer"),
    "ned": ("mean", "ned"),
    "anls": ("mean", "anls"),
    "exact_match": ("mean", "exact_match"),
    "vqa_accuracy": ("mean", "vqa_accuracy"),
    "relaxed_accuracy": ("mean", "relaxed_accuracy"),
    "ocrbench": ("mean", "ocrbench"),
    # table (hb_table), kie (hb_kie), page (hb_page)
    "teds": ("mean", "teds"),
    "teds_struct": ("mean", "teds_struct"),
    "field_f1": ("ratio", "field_tp", "f1_den"),  # TP / (TP + (FP + FN) / 2), summed over the corpus
    "nted_accuracy": ("mean", "nted_accuracy"),
    "page_ned": ("mean", "page_ned"),
    "table_teds": ("ratio", "table_teds_sum", "gt_tables"),  # per ground-truth table
    "table_teds_struct": ("ratio", "table_teds_struct_sum", "gt_tables"),
    "tables_found": ("ratio", "tables_all_found", "has_tables"),  # per page with tables
}
LOWER_IS_BETTER = frozenset({"cer", "wer", "cer_mean", "wer_mean", "ned", "page_ned"})

Statistic = Callable[[Sequence[int]], float]


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(sorted_values[lo])
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def ratio_stat(num: Sequence[float], den: Sequence[float]) -> Statistic:
    """sum(num) / sum(den) over the drawn indices; a zero denominator divides by 1 (as jiwer does)."""

    def fn(idx: Sequence[int]) -> float:
        d = sum(den[i] for i in idx)
        e = sum(num[i] for i in idx)
        return e / d if d > 0 else float(e)

    return fn


def mean_stat(values: Sequence[float]) -> Statistic:
    def fn(idx: Sequence[int]) -> float:
        return sum(values[i] for i in idx) / len(idx) if idx else math.nan

    return fn


def _num(row: Mapping[str, Any], key: str) -> float:
    v = row.get(key)
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and not math.isnan(float(v)):
        return float(v)
    return 0.0


# ("ratio", [numerator per sample], [denominator per sample]) | ("mean", [value per sample])
Columns = tuple[str, tuple[list[float], ...]]


def columns_for(metric: str, rows: Sequence[Mapping[str, Any]]) -> Columns | None:
    """The aggregate's kind and its per-sample columns (None: not an aggregate, or not in the rows)."""
    spec = AGGREGATES.get(metric)
    if spec is None or not rows or any(key not in rows[0] for key in spec[1:]):
        return None
    return spec[0], tuple([_num(r, key) for r in rows] for key in spec[1:])


def statistic_of(columns: Columns) -> Statistic:
    kind, cols = columns
    return ratio_stat(cols[0], cols[1]) if kind == "ratio" else mean_stat(cols[0])


def statistic_for(metric: str, rows: Sequence[Mapping[str, Any]]) -> Statistic | None:
    """The aggregate of `metric` over per-sample rows, as a function of drawn indices."""
    columns = columns_for(metric, rows)
    return None if columns is None else statistic_of(columns)


def bootstrap_ci(
    n: int,
    stats: Mapping[str, Statistic],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap 95% CI of each statistic; one shared index draw per resample."""
    if n == 0:
        return {name: (math.nan, math.nan) for name in stats}
    rng = random.Random(seed)  # noqa: S311 - reproducible resampling, not crypto
    population = range(n)
    draws: dict[str, list[float]] = {name: [] for name in stats}
    for _ in range(resamples):
        idx = rng.choices(population, k=n)
        for name, fn in stats.items():
            draws[name].append(fn(idx))
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        values.sort()
        out[name] = (percentile(values, 2.5), percentile(values, 97.5))
    return out


def paired_bootstrap(
    stat_a: Statistic,
    stat_b: Statistic,
    n: int,
    *,
    lower_better: bool,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any]:
    """Paired bootstrap of the difference B - A over the same n aligned samples.

    Each resample draws n sample indices with replacement and evaluates both
    runs' statistic on the *same* indices (the pairing removes the variance the
    two runs share: hard samples are hard for both). Returns the observed
    difference, its percentile 95% CI, the share of resamples in which B is
    better than A (ties count half), and a two-sided p-value for "no
    difference": 2 * min(P(delta* <= 0), P(delta* >= 0)), capped at 1
    (the percentile-interval test of Koehn 2004 / Berg-Kirkpatrick et al. 2012).
    """
    full = list(range(n))
    observed = stat_b(full) - stat_a(full) if n else math.nan
    if n == 0:
        nan = math.nan
        return {"delta": nan, "ci95": [nan, nan], "p_value": nan, "prob_b_better": nan}
    rng = random.Random(seed)  # noqa: S311
    population = range(n)
    deltas: list[float] = []
    for _ in range(resamples):
        idx = rng.choices(population, k=n)
        deltas.append(stat_b(idx) - stat_a(idx))
    deltas.sort()
    le = sum(1 for d in deltas if d <= 0)
    ge = sum(1 for d in deltas if d >= 0)
    ties = sum(1 for d in deltas if d == 0)
    better = (le if lower_better else ge) - ties  # strictly better
    prob_b_better = (better + ties / 2) / resamples
    p_value = min(1.0, 2 * min(le, ge) / resamples)
    return {
        "delta": observed,
        "ci95": [percentile(deltas, 2.5), percentile(deltas, 97.5)],
        "p_value": p_value,
        "prob_b_better": prob_b_better,
    }
