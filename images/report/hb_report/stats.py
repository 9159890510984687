"""A comparison's statistics, apart from any HTML: the samples every run scored, the paired
bootstrap of each run against the baseline (the eval image's own hb_stats), and the samples
where the runs disagree most. Run 0 is the baseline A.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hb_stats

from hb_report.inputs import RunData, num

ALPHA = 0.05  # significance level of the verdicts


@dataclass(frozen=True)
class Aligned:
    """The samples present in every run, in the baseline's (manifest) order."""

    ids: list[str]
    rows: list[list[dict[str, Any]]]  # rows[i][j]: run i's row of sample ids[j]
    counts: list[int]  # samples each run has, aligned or not

    @property
    def partial(self) -> bool:
        return any(c != len(self.ids) for c in self.counts)


def align(runs: list[RunData]) -> Aligned:
    maps = [{str(r.get("id")): r for r in run.per_sample} for run in runs]
    common = [sid for sid in maps[0] if all(sid in m for m in maps[1:])]
    return Aligned(ids=common, rows=[[m[sid] for sid in common] for m in maps], counts=[len(m) for m in maps])


def common_metrics(runs: list[RunData]) -> list[str]:
    """The baseline's metrics that every other run has too, in the baseline's order."""
    return [m for m in runs[0].metric_values if all(m in r.metric_values for r in runs[1:])]


@dataclass(frozen=True)
class PairTest:
    """Run `run` (B) against the baseline A on one metric: B − A over the aligned samples."""

    run: int
    metric: str
    delta: float
    lo: float
    hi: float
    p_value: float
    prob_b_better: float
    b_better: bool  # the difference points B's way (lower for error rates, higher otherwise)

    @property
    def outcome(self) -> str:
        """ "same" (no difference), "b" or "a" (significantly better at ALPHA), or "ns"."""
        if abs(self.delta) < 1e-12:
            return "same"
        if self.p_value < ALPHA:
            return "b" if self.b_better else "a"
        return "ns"


def paired_tests(aligned: Aligned, metric_names: list[str], *, resamples: int, seed: int) -> list[PairTest]:
    """Every run after the baseline against it, on every metric that can be recomputed per sample."""
    tests = []
    for bi in range(1, len(aligned.rows)):
        for name in metric_names:
            sa = hb_stats.statistic_for(name, aligned.rows[0])
            sb = hb_stats.statistic_for(name, aligned.rows[bi])
            if sa is None or sb is None:
                continue
            lb = hb_stats.lower_is_better(name)
            res = hb_stats.paired_bootstrap(
                sa, sb, len(aligned.ids), lower_better=lb, resamples=resamples, seed=seed
            )
            d, (lo, hi) = res["delta"], res["ci95"]
            tests.append(
                PairTest(
                    run=bi,
                    metric=name,
                    delta=d,
                    lo=lo,
                    hi=hi,
                    p_value=res["p_value"],
                    prob_b_better=res["prob_b_better"],
                    b_better=(d < 0) if lb else (d > 0),
                )
            )
    return tests


def primary_delta(tests: list[PairTest], primary: str) -> float | None:
    """B − A on the primary metric (B = the first challenger), None when it was not tested."""
    return next((t.delta for t in tests if t.run == 1 and t.metric == primary), None)


def primary_scores(aligned: Aligned, run: int, primary: str) -> list[float]:
    """Run `run`'s per-sample primary scores over the aligned samples (0.0 where unscored)."""
    return [v if (v := num(r.get(primary))) is not None else 0.0 for r in aligned.rows[run]]


def disagreements(
    aligned: Aligned, primary: str, lower_better: bool, limit: int
) -> list[tuple[float, str, int]]:
    """Up to `limit` samples the runs disagree on most: (max − min of the primary score, id, index).

    An unscored sample counts as the worst score; ties go by id; no sample where all agree.
    """
    worst = 1.0 if lower_better else 0.0
    spreads = []
    for j, sid in enumerate(aligned.ids):
        clean = [v if (v := num(rows[j].get(primary))) is not None else worst for rows in aligned.rows]
        spreads.append((max(clean) - min(clean), sid, j))
    spreads.sort(key=lambda t: (-t[0], t[1]))
    top = []
    for item in spreads[:limit]:
        if item[0] <= 0:
            break
        top.append(item)
    return top
