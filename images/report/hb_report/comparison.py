"""The comparison report: two or more runs on one dataset version, each against the baseline A.

The numbers come from hb_report.stats; this module only lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hb_stats

from hb_report.charts import forest_svg, scatter_svg, score_axis_max
from hb_report.inputs import RunData, check_comparable, dataset_label, load_runs, num, primary_metric
from hb_report.page import page
from hb_report.stats import (
    Aligned,
    PairTest,
    align,
    common_metrics,
    disagreements,
    paired_tests,
    primary_delta,
    primary_scores,
)
from hb_report.text import char_diff_html, clip, esc, fmt_num, render_value, run_letter, short_digest
from hb_report.thumbs import thumbnail_html

DISAGREE_SIZE = 8
_VERDICTS = {
    "same": ("no difference", "muted"),
    "a": ("A better", "worse"),
    "ns": ("not significant", "muted"),
}


@dataclass(frozen=True)
class _Comparison:
    data_dir: Path
    runs: list[RunData]
    aligned: Aligned
    primary: str
    lower_better: bool


def _value_cell(m: dict[str, Any]) -> str:
    ci = m.get("ci95") or [None, None]
    return (
        f"<td class=num>{esc(fmt_num(m.get('value')))} "
        f"<span class=muted>[{esc(fmt_num(ci[0]))}, {esc(fmt_num(ci[1]))}]</span></td>"
    )


def _values_table(runs: list[RunData], metric_names: list[str], primary: str) -> str:
    """Every run's value [CI] of every metric they all have."""
    head = "".join(f"<th>{esc(run_letter(i))}: {esc(r.label)}</th>" for i, r in enumerate(runs))
    rows = []
    for name in metric_names:
        cells = "".join(_value_cell(r.metric_values[name]) for r in runs)
        tag = '<span class="tag">primary</span>' if name == primary else ""
        rows.append(f"<tr><td>{esc(name)}{tag}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def _verdict(test: PairTest) -> tuple[str, str]:
    """(verdict, CSS class) of one paired test."""
    if test.outcome == "b":
        return f"{run_letter(test.run)} better", "better"
    return _VERDICTS[test.outcome]


def _test_row(test: PairTest, resamples: int) -> str:
    verdict, cls = _verdict(test)
    p_txt = f"&lt; {1 / resamples:g}" if test.p_value == 0 else f"{test.p_value:.4f}"
    return (
        f"<tr><td>{run_letter(test.run)} − A</td><td>{esc(test.metric)}</td>"
        f"<td class=num>{test.delta:+.4f}</td>"
        f"<td class=num>[{test.lo:+.4f}, {test.hi:+.4f}]</td><td class=num>{p_txt}</td>"
        f"<td class=num>{test.prob_b_better:.1%}</td><td class={cls}>{esc(verdict)}</td></tr>"
    )


def _tests_html(tests: list[PairTest], n: int, resamples: int, seed: int) -> str:
    return (
        "<table><tr><th>pair</th><th>metric</th><th>difference</th><th>95% CI</th><th>p-value</th>"
        "<th>P(better than A)</th><th>verdict (α = 0.05)</th></tr>"
        + "".join(_test_row(t, resamples) for t in tests)
        + "</table>"
        f"<p class=muted>Paired bootstrap over the {n} samples both runs scored: {resamples} "
        f"resamples (seed {seed}) draw the same sample indices for both runs; the difference is "
        "recomputed exactly as the metric (corpus ratio for CER/WER, mean otherwise). P(B better) = share "
        "of resamples in which B beats A (ties count half); p-value = 2 × min(P(Δ ≤ 0), P(Δ ≥ 0)). "
        "For cer/wer/ned lower is better, so a negative difference favours B.</p>"
    )


def _charts(tests: list[PairTest], cmp: _Comparison) -> str:
    """The forest plot of every difference, and the primary scores of A against B."""
    forest = forest_svg(
        [(f"{run_letter(t.run)}−A {t.metric}", t.delta, t.lo, t.hi, t.b_better) for t in tests]
    )
    xs = primary_scores(cmp.aligned, 0, cmp.primary)
    ys = primary_scores(cmp.aligned, 1, cmp.primary)
    scatter = scatter_svg(
        xs,
        ys,
        x_label=f"A: {cmp.primary} per sample",
        y_label=f"B: {cmp.primary} per sample",
        hi=score_axis_max(xs + ys, cmp.lower_better),
    )
    return f'<div class="charts">{forest}{scatter}</div>'


def _run_column(cmp: _Comparison, i: int, j: int, preds: dict[str, dict[str, Any]], reference: str) -> str:
    """Run i's prediction of aligned sample j, as a diff against the ground truth."""
    row = cmp.aligned.rows[i][j]
    pred = row.get("prediction")
    if pred is None and not row.get("error"):
        pred = preds.get(cmp.aligned.ids[j], {}).get("prediction")
    text = "" if pred is None else str(pred)
    err = row.get("error")
    return (
        f'<div class="run-col"><div class="rh"><span>{esc(run_letter(i))}: {esc(cmp.runs[i].label)}</span>'
        f"<span>{esc(cmp.primary)} {esc(fmt_num(row.get(cmp.primary)))}</span></div>"
        + (f'<div class="txt err">{esc(clip(str(err), 300))}</div>' if err else "")
        + f'<div class="lbl">prediction vs ground truth (<del>missing</del> <ins>extra</ins>)</div>'
        f'<div class="txt">{char_diff_html(clip(reference), clip(text))}</div></div>'
    )


def _disagree_card(cmp: _Comparison, spread: float, j: int, preds: list[dict[str, dict[str, Any]]]) -> str:
    sid = cmp.aligned.ids[j]
    r0 = cmp.aligned.rows[0][j]
    reference = str(r0.get("reference") or "")
    question = r0.get("question")
    q_html = f'<div class="lbl">question</div><div class="txt">{esc(question)}</div>' if question else ""
    cols = "".join(_run_column(cmp, i, j, preds[i], reference) for i in range(len(cmp.runs)))
    return (
        f'<div class="sample"><div class="head"><span>{esc(sid)}</span>'
        f'<span class="score">spread {esc(fmt_num(spread))}</span></div>'
        f"{thumbnail_html(cmp.data_dir, r0.get('image'), sid)}"
        f'<div class="body">{q_html}<div class="lbl">ground truth</div>'
        f'<div class="txt">{esc(clip(reference))}</div>'
        f'<div class="lbl">runs</div><div class="runs">{cols}</div></div></div>'
    )


def _disagreement(cmp: _Comparison) -> str:
    """The samples where the runs disagree most on the primary metric, side by side."""
    preds = [{str(p.get("id")): p for p in run.predictions} for run in cmp.runs]
    top = disagreements(cmp.aligned, cmp.primary, cmp.lower_better, DISAGREE_SIZE)
    cards = "".join(_disagree_card(cmp, spread, j, preds) for spread, _, j in top)
    if not cards:
        return "<p class=muted>The runs agree on every sample.</p>"
    return f'<div class="gallery wide cmp">{cards}</div>'


def _runs_html(runs: list[RunData], aligned: Aligned) -> str:
    rows = "".join(
        f"<tr><td>{esc(run_letter(i))}</td><td>{esc(r.label)}</td>"
        f"<td>{short_digest(r.run.get('image_digest'))}</td>"
        f"<td>{render_value(r.run.get('params', {}))}</td><td>{esc(r.run.get('prompt') or '')}</td>"
        f"<td class=num>{esc(fmt_num(r.metrics.get('errors')))}</td>"
        f"<td class=num>{esc(fmt_num(num(r.run.get('throughput_samples_per_s'))))}</td></tr>"
        for i, r in enumerate(runs)
    )
    base = runs[0]
    warn = ""
    if aligned.partial:
        warn = (
            f'<div class="warn">Only the {len(aligned.ids)} samples present in every run are compared '
            f"(runs have {', '.join(str(c) for c in aligned.counts)} samples).</div>"
        )
    return (
        warn + "<table><tr><th></th><th>run</th><th>image digest</th><th>params</th><th>prompt</th>"
        f"<th>failed</th><th>samples/s</th></tr>{rows}</table>"
        f"<p class=muted>dataset {esc(dataset_label(base))}, manifest "
        f"{esc(base.run.get('manifest_sha256') or 'not recorded')}, metric version "
        f"{esc(base.metrics.get('metric_version'))}, {len(aligned.ids)} samples compared</p>"
    )


def build_comparison(data_dir: Path, runs_dir: Path) -> str:
    runs = load_runs(runs_dir)
    check_comparable(runs)
    primary, lower_better = primary_metric(runs[0].metrics)
    metric_names = common_metrics(runs)
    cmp = _Comparison(data_dir, runs, align(runs), primary, lower_better)
    n = len(cmp.aligned.ids)
    resamples, seed = hb_stats.BOOTSTRAP_RESAMPLES, hb_stats.BOOTSTRAP_SEED
    tests = paired_tests(cmp.aligned, metric_names, resamples=resamples, seed=seed)

    kpis = [("Runs", str(len(runs))), ("Samples", f"{n:,}"), ("Primary", primary.upper())]
    delta = primary_delta(tests, primary)
    if delta is not None:
        kpis.append((f"Δ {primary.upper()} (B − A)", f"{delta:+.4f}"))
    sections = [
        ("Runs", _runs_html(runs, cmp.aligned)),
        ("Metrics", _values_table(runs, metric_names, primary)),
        (
            "Is B really better? Paired bootstrap",
            _tests_html(tests, n, resamples, seed) + _charts(tests, cmp),
        ),
        (f"Where the runs disagree most ({esc(primary)})", _disagreement(cmp)),
    ]
    title = f"HyperBench comparison · {dataset_label(runs[0])}"
    subtitle = " vs ".join(esc(r.label) for r in runs)
    return page(title, subtitle, kpis, sections)
