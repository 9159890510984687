"""The run report: summary, metrics, distributions, timing, the worst samples and the failures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import hb_stats

from hb_report import gallery
from hb_report.charts import bars_svg, histogram_svg, score_axis_max, timing_svg
from hb_report.inputs import RunData, dataset_label, load_run, num, primary_metric
from hb_report.page import page
from hb_report.text import char_diff_html, clip, esc, fmt_num, fmt_pct, render_value
from hb_report.thumbs import thumbnail_html

GALLERY_SIZE = 8
MAX_ERRORS_LISTED = 100

SUMMARY_KEYS = [
    ("Run", "run_id"),
    ("Experiment", "experiment"),
    ("Owner", "owner"),
    ("Model", "model"),
    ("Image", "image"),
    ("Image digest", "image_digest"),
    ("Dataset", "dataset"),
    ("Manifest sha256", "manifest_sha256"),
    ("Task", "task"),
    ("Samples", "samples"),
    ("Shards", "shards"),
    ("Params", "params"),
    ("Prompt", "prompt"),
]
TIMING_KEYS = [
    ("Dataset sync, sum over shards", "sync_s"),
    ("Inference, wall clock (incl. sync)", "inference_s"),
    ("Model containers, sum over shards", "container_s"),
    ("Evaluation, wall clock", "evaluation_s"),
    ("Report, wall clock", "report_s"),
]
TIMING_EXTRA = {"throughput_samples_per_s", "gpu_seconds"}


def summary_table(data: RunData) -> str:
    run = dict(data.run)
    if not run.get("dataset"):
        run["dataset"] = dataset_label(data)
    rows = []
    # Every summary key gets one row at most: recorded, "not recorded" (the facts a
    # reader must be able to check), or none; never again among the extra facts below.
    used = {key for _, key in SUMMARY_KEYS} | {key for _, key in TIMING_KEYS} | TIMING_EXTRA
    for label, key in SUMMARY_KEYS:
        if key in run and run[key] not in (None, ""):
            rows.append(f"<tr><td>{esc(label)}</td><td>{render_value(run[key])}</td></tr>")
        elif key in ("image_digest", "manifest_sha256", "prompt"):
            missing = "none (empty)" if key == "prompt" and key in run else "not recorded"
            rows.append(f"<tr><td>{esc(label)}</td><td class=muted>{missing}</td></tr>")
    extra = "".join(
        f"<tr><td>{esc(k)}</td><td>{render_value(v)}</td></tr>" for k, v in run.items() if k not in used
    )
    return f'<table class="facts">{"".join(rows)}{extra}</table>'


def timing_phases(run: dict[str, Any]) -> list[tuple[str, float]]:
    """The run's wall-clock phases, end to end, for the stacked bar: no second counted twice.

    The shards sync the dataset inside the inference stage. With one shard its
    sync is a phase of its own before the model runs; with several, the shards'
    syncs overlap each other and the models, so inference is shown with its syncs.
    """
    sync, inference = num(run.get("sync_s")), num(run.get("inference_s"))
    shards = num(run.get("shards")) or 1
    phases: list[tuple[str, float]] = []
    if inference is not None and sync is not None and shards <= 1 and sync <= inference:
        phases += [("Dataset sync", sync), ("Inference", inference - sync)]
    elif inference is not None:
        phases.append(("Inference incl. sync" if sync is not None else "Inference", inference))
    elif sync is not None:
        phases.append(("Dataset sync", sync))
    for label, key in (("Evaluation", "evaluation_s"), ("Report", "report_s")):
        if (v := num(run.get(key))) is not None:
            phases.append((label, v))
    return phases


def _throughput(data: RunData) -> float | None:
    """Samples per second: as recorded, else samples / inference wall clock."""
    throughput = num(data.run.get("throughput_samples_per_s"))
    inference = num(data.run.get("inference_s"))
    n = num(data.metrics.get("n")) or 0
    if throughput is None and inference and n:
        throughput = n / inference
    return throughput


def _stage_rows(run: dict[str, Any], phases: list[tuple[str, float]]) -> list[str]:
    rows = []
    for label, key in TIMING_KEYS:
        v = num(run.get(key))
        if v is None and key == "sync_s":
            rows.append(f"<tr><td>{esc(label)}</td><td class='num muted'>not recorded</td></tr>")
        elif v is not None:
            rows.append(f"<tr><td>{esc(label)}</td><td class=num>{v:,.2f} s</td></tr>")
    if phases:
        rows.append(
            "<tr><td><b>Total, wall clock</b></td>"
            f"<td class=num><b>{sum(v for _, v in phases):,.2f} s</b></td></tr>"
        )
    return rows


def _rate_rows(data: RunData) -> list[str]:
    throughput = _throughput(data)
    rows = [
        f"<tr><td>Throughput</td><td class=num>"
        f"{f'{throughput:,.2f} samples/s' if throughput is not None else '–'}</td></tr>"
    ]
    gpu_s = num(data.run.get("gpu_seconds"))
    gpu_text = "not recorded" if gpu_s is None else f"{gpu_s:,.1f}" + (" (no GPU held)" if gpu_s == 0 else "")
    rows.append(f"<tr><td>GPU-seconds</td><td class=num>{gpu_text}</td></tr>")
    lat = data.metrics.get("latency_ms") if isinstance(data.metrics.get("latency_ms"), dict) else {}
    if lat and lat.get("p50") is not None:
        rows.append(
            "<tr><td>Latency per sample</td><td class=num>"
            f"p50 {fmt_num(lat.get('p50'), 1)} ms · p95 {fmt_num(lat.get('p95'), 1)} ms · "
            f"max {fmt_num(lat.get('max'), 1)} ms</td></tr>"
        )
    elapsed = num(data.metrics.get("elapsed_s"))
    if elapsed is not None:
        rows.append(f"<tr><td>Scoring inside the eval container</td><td class=num>{elapsed:,.2f} s</td></tr>")
    return rows


def timing_section(data: RunData) -> str:
    phases = timing_phases(data.run)
    rows = _stage_rows(data.run, phases) + _rate_rows(data)
    return (
        f'<div class="timing"><table class="facts">{"".join(rows)}</table>'
        f"<div>{timing_svg(phases)}</div></div>"
    )


def metric_table(data: RunData, primary: str) -> str:
    metrics = data.metrics
    rows = []
    for name, m in data.metric_values.items():
        ci = m.get("ci95") or [None, None]
        direction = "lower is better" if hb_stats.lower_is_better(name) else "higher is better"
        tag = '<span class="tag">primary</span>' if name == primary else ""
        cls = ' class="primary"' if name == primary else ""
        rows.append(
            f"<tr{cls}><td>{esc(name)}{tag}</td><td class=num>{esc(fmt_num(m.get('value')))}</td>"
            f"<td class=num>{esc(fmt_pct(m.get('value')))}</td>"
            f"<td class=num>[{esc(fmt_num(ci[0]))}, {esc(fmt_num(ci[1]))}]</td>"
            f"<td class=muted>{direction}</td></tr>"
        )
    boot = metrics.get("bootstrap") or {}
    out = (
        "<table><tr><th>metric</th><th>value</th><th>%</th><th>95% CI (bootstrap)</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        + f"<p class=muted>n = {esc(fmt_num(metrics.get('n')))}"
        + f", failed samples (errors) = {esc(fmt_num(metrics.get('errors')))}"
        + f" (missing predictions {esc(fmt_num(metrics.get('missing')))})"
        + f", bootstrap: {esc(fmt_num(boot.get('resamples')))} resamples, seed {esc(boot.get('seed'))}"
        + f", metric version <b>{esc(metrics.get('metric_version', '–'))}</b></p>"
    )
    for title, key in (("normalization", "normalization"), ("empty strings and failures", "policy")):
        block = metrics.get(key)
        if isinstance(block, dict) and block:
            out += (
                f"<details><summary>{esc(title)}</summary><table class=facts>"
                + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in block.items())
                + "</table></details>"
            )
    return out


def length_buckets(rows: list[dict[str, Any]], k: int = 5) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by reference length into up to k quantile buckets.

    Samples of one length never straddle two buckets (that would draw two bars
    with the same label), so a bucket may hold more than n / k samples.
    """
    keyed = sorted(
        (int(r.get("ref_chars") or len(str(r.get("reference") or ""))), i) for i, r in enumerate(rows)
    )
    if not keyed:
        return []
    size = math.ceil(len(keyed) / min(k, len(keyed)))
    parts: list[list[tuple[int, int]]] = [[]]
    for item in keyed:
        current = parts[-1]
        if len(current) >= size and item[0] != current[-1][0]:
            parts.append([item])
        else:
            current.append(item)
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for part in parts:
        lo, hi = part[0][0], part[-1][0]
        label = f"{lo} ch" if lo == hi else f"{lo}–{hi} ch"
        out.append((label, [rows[i] for _, i in part]))
    return out


def error_rate_chart(data: RunData, primary: str, lower_better: bool) -> str:
    rows = data.per_sample
    if any("category" in r for r in rows):
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            groups.setdefault(str(r.get("category", "(none)")), []).append(r)
        grouped = sorted(groups.items())
        by = "category"
    else:
        grouped = length_buckets(rows)
        by = "reference length"
    labels, err, failed = [], [], []
    for label, group in grouped:
        stat = hb_stats.statistic_for(primary, group)
        value = stat(range(len(group))) if stat else math.nan
        rate = value if lower_better else 1.0 - value
        labels.append(f"{label} (n={len(group)})")
        err.append(0.0 if math.isnan(rate) else rate)
        failed.append(sum(1 for r in group if r.get("error")) / len(group))
    name = primary.upper() if lower_better else f"1 − {primary.upper()}"
    return bars_svg(
        labels,
        [(f"error rate ({name})", err, "#f03e3e"), ("failed samples", failed, "#495057")],
        title=f"error rate by {by}",
    )


def _prediction_html(prediction: object) -> str:
    pred_text = "" if prediction is None else str(prediction)
    if prediction is None:
        return '<div class="txt muted">none: the sample failed, scored as the worst value</div>'
    if not pred_text:
        return '<div class="txt muted">(empty string)</div>'
    return f'<div class="txt">{esc(clip(pred_text))}</div>'


def _ground_truth_label(answers: object) -> str:
    if isinstance(answers, list) and len(answers) > 1:
        return f"ground truth (1 of {len(answers)}: {esc(clip(' | '.join(map(str, answers[1:6])), 200))})"
    return "ground truth"


def gallery_card(
    data_dir: Path, r: dict[str, Any], pred_row: dict[str, Any], metric_name: str, *, badge: str = ""
) -> str:
    sid = str(r.get("id"))
    reference = str(r.get("reference") or "")
    prediction = r.get("prediction")
    if prediction is None and not pred_row.get("error"):
        prediction = pred_row.get("prediction")
    error = r.get("error") or pred_row.get("error")
    question = r.get("question")
    q_html = f'<div class="lbl">question</div><div class="txt">{esc(question)}</div>' if question else ""
    pred_text = "" if prediction is None else str(prediction)
    err_html = (
        f'<div class="lbl">error</div><div class="txt err">{esc(clip(str(error)))}</div>' if error else ""
    )
    score = r.get(metric_name)
    return (
        f'<div class="sample"><div class="head"><span>{esc(sid)}{badge}</span>'
        f'<span class="score">{esc(metric_name.upper())} {esc(fmt_num(score))}</span></div>'
        f"{thumbnail_html(data_dir, r.get('image'), sid)}<div class=body>{q_html}"
        f'<div class="lbl">{_ground_truth_label(r.get("answers"))}</div>'
        f'<div class="txt">{esc(clip(reference))}</div>'
        f'<div class="lbl">prediction</div>{_prediction_html(prediction)}'
        f"{err_html}"
        f'<div class="lbl">diff (<del>missing</del> <ins>extra</ins>)</div>'
        f'<div class="txt">{char_diff_html(clip(reference), clip(pred_text))}</div>'
        f"</div></div>"
    )


def errors_section(rows: list[dict[str, Any]]) -> str:
    failed = [r for r in rows if r.get("error")]
    if not failed:
        return "<p class=muted>No failed samples: every sample has a prediction without an error.</p>"
    items = "".join(
        f"<tr><td>{esc(r.get('id'))}</td><td>{'missing' if r.get('missing') else 'model error'}</td>"
        f'<td class="err">{esc(clip(str(r.get("error")), 300))}</td></tr>'
        for r in failed[:MAX_ERRORS_LISTED]
    )
    more = (
        f"<p class=muted>… and {len(failed) - MAX_ERRORS_LISTED} more (per_sample.jsonl has them all).</p>"
        if len(failed) > MAX_ERRORS_LISTED
        else ""
    )
    return (
        f"<p>{len(failed)} of {len(rows)} samples failed; they are scored as the worst value, "
        "not dropped.</p>"
        f"<table><tr><th>sample</th><th>kind</th><th>error</th></tr>{items}</table>{more}"
    )


def _kpis(data: RunData) -> list[tuple[str, str]]:
    kpis = [(name.upper(), fmt_pct(m.get("value"))) for name, m in data.metric_values.items()][:6]
    kpis.append(("Samples", fmt_num(data.metrics.get("n"))))
    kpis.append(("Failed", fmt_num(data.metrics.get("errors"))))
    thr = num(data.run.get("throughput_samples_per_s"))
    if thr is not None:
        kpis.append(("Samples/s", f"{thr:,.2f}"))
    return kpis


def _distributions(data: RunData, metric_name: str, lower_better: bool) -> str:
    scores = [v for r in data.per_sample if (v := num(r.get(metric_name))) is not None]
    score_chart = histogram_svg(
        scores,
        bins=20,
        lo=0.0,
        hi=score_axis_max(scores, lower_better),
        label=f"per-sample {metric_name.upper()} (score distribution)",
        color="#3b5bdb",
    )
    latencies = [
        v for p in data.predictions if (v := num(p.get("latency_ms"))) is not None and not p.get("error")
    ]
    lat_chart = histogram_svg(
        latencies,
        bins=20,
        lo=0.0,
        hi=max(latencies, default=1.0) * 1.0001,
        label="latency per sample (ms)",
        color="#12b886",
        unit=" ms",
    )
    group_chart = error_rate_chart(data, metric_name, lower_better)
    return f'<div class="charts">{score_chart}{group_chart}{lat_chart}</div>'


def worst_samples(data: RunData, metric_name: str, lower_better: bool) -> list[dict[str, Any]]:
    """The GALLERY_SIZE worst rows by the metric; unscored (failed) rows first."""

    def badness(r: dict[str, Any]) -> float:
        v = num(r.get(metric_name))
        if v is None:
            return math.inf
        return v if lower_better else -v

    return sorted(data.per_sample, key=badness, reverse=True)[:GALLERY_SIZE]


def build_report(data_dir: Path, inp: Path) -> str:
    data = load_run(inp)
    metric_name, lower_better = primary_metric(data.metrics)
    pred_by_id = {str(p.get("id")): p for p in data.predictions}
    run = data.run
    worst = worst_samples(data, metric_name, lower_better)
    task = str(data.metrics.get("task") or "")
    doc = task in gallery.BODIES  # table, kie, page: task-aware cards, one a line
    cards = "".join(
        gallery.doc_card(task, data_dir, r, pred_by_id.get(str(r.get("id")), {}))
        if doc
        else gallery_card(data_dir, r, pred_by_id.get(str(r.get("id")), {}), metric_name)
        for r in worst
    )
    title = (
        f"HyperBench report · run {run.get('run_id')}"
        if run.get("run_id") is not None
        else "HyperBench report"
    )
    subtitle = " · ".join(esc(x) for x in (data.model_name, dataset_label(data)) if x)
    sections = [
        ("Summary", summary_table(data)),
        ("Metrics", metric_table(data, metric_name)),
        ("Distributions", _distributions(data, metric_name, lower_better)),
        ("Timing and throughput", timing_section(data)),
        (
            f"Worst {len(worst)} samples by {esc(metric_name.upper())}",
            f'<div class="gallery{" wide" if doc else ""}">{cards}</div>',
        ),
        ("Failed samples", errors_section(data.per_sample)),
    ]
    return page(title, subtitle, _kpis(data), sections, gallery.CSS if doc else "")
