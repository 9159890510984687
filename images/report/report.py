"""HyperBench report image: one self-contained HTML file for a run, or a comparison of runs.

Run mode (no /job/input/runs/ directory), inputs read-only:
  /job/input/metrics.json      from the eval image
  /job/input/per_sample.jsonl  from the eval image
  /job/input/predictions.jsonl merged model predictions
  /job/input/run.json          run facts: summary keys (model, image_digest, dataset,
                               manifest_sha256, params, prompt, ...) and timings
                               (sync_s, inference_s, container_s, evaluation_s,
                               throughput_samples_per_s, gpu_seconds)
  /data                        the dataset (images for the gallery)
Comparison mode (the worker mounts /job/input/runs/): two or more runs on the
same dataset version, /job/input/runs/<k>/{metrics.json,per_sample.jsonl,
predictions.jsonl,run.json}; run directories sort by name (numbers
numerically), the first is the baseline A. See README.md.
Output:
  /job/output/report.html      inline CSS, inline SVG charts, images as data: URIs

No network, no external resource: every piece of text from a model or a run is
escaped with html.escape (predictions are untrusted).
HB_DATA_DIR, HB_JOB_DIR, HB_INPUT_DIR and HB_OUTPUT_DIR move the paths (tests).
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from PIL import Image, ImageOps

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent / "eval"):  # hb_stats.py: beside us in the image, ../eval in the repo
    if (_p / "hb_stats.py").is_file() and str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

import hb_stats  # noqa: E402

GALLERY_SIZE = 8
DISAGREE_SIZE = 8
MAX_ERRORS_LISTED = 100
THUMB_MAX = (560, 420)
MAX_TEXT = 4000  # characters of ground truth / prediction shown per sample
MAX_IMAGE_PIXELS = 80_000_000

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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
    rows: list[dict[str, Any]] = []
    try:
        fh = open(path, encoding="utf-8")
    except FileNotFoundError:
        return rows
    with fh:
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


def fmt_num(value: object, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_pct(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(float(value)):
        return f"{float(value) * 100:.2f}%"
    return "–"


# ---------------------------------------------------------------- images


def safe_image_path(root: Path, relative: object) -> Path | None:
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        return None
    pure = PurePosixPath(relative.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        return None
    candidate = root.joinpath(*pure.parts)
    try:
        real_root = root.resolve()
        real = candidate.resolve()
    except OSError:
        return None
    if real_root not in real.parents:
        return None
    return candidate if candidate.is_file() else None


def thumbnail_data_uri(path: Path) -> str | None:
    try:
        with Image.open(path) as src:
            src.draft("RGB", (THUMB_MAX[0] * 2, THUMB_MAX[1] * 2))
            im: Image.Image = ImageOps.exif_transpose(src)
            if im.mode not in ("RGB", "L"):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, "white")
                im.paste(rgba, mask=rgba.getchannel("A"))
            im.thumbnail(THUMB_MAX, Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=82, optimize=True)
    except Exception:  # noqa: BLE001 - an unreadable image shows as "no preview"
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ---------------------------------------------------------------- charts


def tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{value:.2f}".rstrip("0").rstrip(".")


def histogram_svg(
    values: list[float], *, bins: int, lo: float, hi: float, label: str, color: str, unit: str = ""
) -> str:
    width, height = 520, 220
    pad_l, pad_r, pad_t, pad_b = 44, 12, 14, 40
    if not values:
        return (
            f'<svg viewBox="0 0 {width} {height}" class="chart" '
            f'role="img" aria-label="{esc(label)}"><text x="{width / 2}" y="{height / 2}" '
            f'text-anchor="middle" class="muted">no data</text></svg>'
        )
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    step = (hi - lo) / bins
    for v in values:
        i = int((min(max(v, lo), hi) - lo) / step)
        counts[min(i, bins - 1)] += 1
    top = max(counts) or 1
    plot_w = width - pad_l - pad_r
    plot_h = height - pad_t - pad_b
    bar_w = plot_w / bins
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{esc(label)}">']
    y_ticks = sorted({0, top // 2, top}) if top >= 2 else [0, top]
    for tick in y_ticks:
        y = pad_t + plot_h * (1 - tick / top)
        parts.append(
            f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - pad_r}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{tick}</text>'
        )
    for i, c in enumerate(counts):
        h = plot_h * c / top
        x = pad_l + i * bar_w
        b_lo, b_hi = lo + i * step, lo + (i + 1) * step
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="{color}" rx="2"><title>{esc(f"{b_lo:.3g}–{b_hi:.3g}{unit}: {c}")}'
            f"</title></rect>"
        )
    for i in range(0, bins + 1, max(bins // 5, 1)):
        x = pad_l + i * bar_w
        parts.append(
            f'<text x="{x:.1f}" y="{height - pad_b + 16}" text-anchor="middle" class="tick">'
            f"{esc(tick_label(lo + i * step))}</text>"
        )
    parts.append(
        f'<text x="{pad_l + plot_w / 2}" y="{height - 6}" text-anchor="middle" class="axis">'
        f"{esc(label)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- diff


def char_diff_html(reference: str, prediction: str) -> str:
    """Character diff: deletions (in the reference, missed) red, insertions (extra) green."""
    sm = difflib.SequenceMatcher(a=reference, b=prediction, autojunk=False)
    out: list[str] = []
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            out.append(esc(reference[a0:a1]))
        if op in ("delete", "replace"):
            out.append(f'<del title="missing">{esc(reference[a0:a1])}</del>')
        if op in ("insert", "replace"):
            out.append(f'<ins title="extra">{esc(prediction[b0:b1])}</ins>')
    return "".join(out)


def clip(text: str, limit: int = MAX_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + " …[truncated]"


# ---------------------------------------------------------------- page

CSS = """
:root{--bg:#f6f7fb;--card:#fff;--ink:#1d2330;--muted:#6b7385;--line:#e3e6ee;--accent:#3b5bdb;
--bad:#c92a2a;--good:#2b8a3e;--delbg:#ffe3e3;--insbg:#d3f9d8}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{background:linear-gradient(120deg,#243b8a,#3b5bdb);color:#fff;padding:28px 36px}
header h1{margin:0 0 4px;font-size:24px}header .sub{opacity:.85}
.kpis{display:flex;gap:14px;flex-wrap:wrap;margin-top:18px}
.kpi{background:rgba(255,255,255,.14);border-radius:10px;padding:10px 16px;min-width:120px}
.kpi .v{font-size:22px;font-weight:600}.kpi .k{font-size:12px;opacity:.85;text-transform:uppercase}
main{padding:24px 36px;max-width:1280px;margin:auto}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:18px 22px;
margin-bottom:20px}
h2{margin:0 0 12px;font-size:17px}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 10px;
border-bottom:1px solid var(--line);vertical-align:top}th{color:var(--muted);font-weight:600}
td.num{font-variant-numeric:tabular-nums}
.facts td:first-child{color:var(--muted);width:220px;white-space:nowrap}
.facts pre{margin:0;white-space:pre-wrap;word-break:break-word;font-size:12px}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
.chart{width:100%;height:auto}.chart .grid{stroke:var(--line)}.chart .tick{font-size:10px;fill:var(--muted)}
.chart .axis{font-size:12px;fill:var(--ink)}.muted{color:var(--muted);fill:var(--muted)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.sample{border:1px solid var(--line);border-radius:10px;overflow:hidden}
.sample .head{display:flex;justify-content:space-between;padding:8px 12px;background:#fafbfd;
border-bottom:1px solid var(--line);font-weight:600}
.sample .head .score{color:var(--bad)}
.sample img{display:block;max-width:100%;margin:10px auto;border:1px solid var(--line)}
.sample .noimg{padding:30px;text-align:center;color:var(--muted)}
.sample .body{padding:8px 12px}.sample .lbl{font-size:11px;color:var(--muted);text-transform:uppercase;
margin-top:8px}
.txt{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;white-space:pre-wrap;
word-break:break-word;background:#fafbfd;border:1px solid var(--line);border-radius:6px;padding:6px 8px}
del{background:var(--delbg);color:var(--bad);text-decoration:line-through}
ins{background:var(--insbg);color:var(--good);text-decoration:none}
.err{color:var(--bad)}footer{color:var(--muted);font-size:12px;text-align:center;padding:10px 0 30px}
"""


CSS_EXTRA = """
.primary{font-weight:700}.tag{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;
background:#e7ecff;color:var(--accent);margin-left:6px}
.warn{background:#fff4e6;border:1px solid #ffd8a8;border-radius:8px;padding:8px 12px;margin-bottom:12px}
.timing{display:grid;grid-template-columns:max-content minmax(320px,1fr);gap:28px;align-items:center}
.timing .facts td{white-space:nowrap}.timing .facts td:first-child{width:auto}
.better{color:var(--good);font-weight:600}.worse{color:var(--bad);font-weight:600}
.runs{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:10px}
.run-col{border:1px solid var(--line);border-radius:8px;padding:6px 8px}
.run-col .rh{display:flex;justify-content:space-between;font-weight:600;font-size:12.5px}
.cmp .sample img{max-height:360px}
.gallery.wide{grid-template-columns:1fr}
"""


def render_value(value: object) -> str:
    if isinstance(value, dict | list):
        return f"<pre>{esc(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True))}</pre>"
    if isinstance(value, float):
        return esc(fmt_num(value))
    return esc(value)


# ---------------------------------------------------------------- inputs


@dataclass
class RunData:
    key: str
    metrics: dict[str, Any]
    run: dict[str, Any]
    per_sample: list[dict[str, Any]]
    predictions: list[dict[str, Any]]

    @property
    def label(self) -> str:
        model = self.run.get("model")
        if isinstance(model, dict):
            model = model.get("name")
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


def num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return None if math.isnan(f) else f


# ---------------------------------------------------------------- more charts


def bars_svg(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float], str]],
    *,
    title: str,
    y_max: float = 1.0,
) -> str:
    """Grouped vertical bars (values as fractions, axis in %)."""
    width, height = 520, 240
    pad_l, pad_r, pad_t, pad_b = 44, 12, 26, 56
    if not labels:
        return (
            f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{esc(title)}">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">no data</text></svg>'
        )
    y_max = max(y_max, max((v for _, vals, _ in series for v in vals), default=0.0), 1e-9)
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    group_w = plot_w / len(labels)
    bar_w = max(min(group_w * 0.8 / max(len(series), 1), 48), 2)
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{esc(title)}">']
    for frac in (0, 0.5, 1):
        y = pad_t + plot_h * (1 - frac)
        parts.append(
            f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - pad_r}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
            f"{frac * y_max * 100:.0f}%</text>"
        )
    for gi, label in enumerate(labels):
        x0 = pad_l + gi * group_w + (group_w - bar_w * len(series)) / 2
        for si, (name, values, color) in enumerate(series):
            v = values[gi]
            h = plot_h * min(v / y_max, 1.0)
            x = x0 + si * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{pad_t + plot_h - h:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                f'height="{max(h, 0.5):.1f}" fill="{color}" rx="2"><title>{esc(f"{label} · {name}: {v:.1%}")}'
                f"</title></rect>"
            )
        short = label if len(label) <= 16 else label[:15] + "…"
        parts.append(
            f'<text x="{pad_l + (gi + 0.5) * group_w:.1f}" y="{height - pad_b + 14}" text-anchor="middle" '
            f'class="tick">{esc(short)}</text>'
        )
    lx = float(pad_l)
    for name, _, color in series:
        parts.append(
            f'<rect x="{lx}" y="6" width="10" height="10" fill="{color}" rx="2"/>'
            f'<text x="{lx + 14}" y="15" class="tick">{esc(name)}</text>'
        )
        lx += 22 + 6.2 * len(name)
    parts.append(
        f'<text x="{pad_l + plot_w / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
        f"{esc(title)}</text>"
    )
    parts.append("</svg>")
    return "".join(parts)


def timing_svg(stages: Sequence[tuple[str, float]]) -> str:
    """One horizontal stacked bar of consecutive wall-clock phases, with a legend."""
    width, height = 560, 86
    total = sum(v for _, v in stages)
    colors = {"Dataset sync": "#74c0fc", "Evaluation": "#12b886", "Report": "#f59f00"}  # inference: blue
    if total <= 0:
        return (
            f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="timing">'
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">'
            "no timings</text></svg>"
        )
    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="stage timing">']
    x = legend_x = 10.0
    span = width - 20
    for name, v in stages:
        w = span * v / total
        c = colors.get(name, "#3b5bdb")
        parts.append(
            f'<rect x="{x:.1f}" y="14" width="{max(w, 1):.1f}" height="30" fill="{c}">'
            f"<title>{esc(f'{name}: {v:.2f} s')}</title></rect>"
        )
        if w > 60:
            parts.append(
                f'<text x="{x + w / 2:.1f}" y="34" text-anchor="middle" fill="#fff" font-size="12">'
                f"{esc(f'{v:.1f} s')}</text>"
            )
        parts.append(
            f'<rect x="{legend_x:.0f}" y="58" width="10" height="10" fill="{c}" rx="2"/>'
            f'<text x="{legend_x + 14:.0f}" y="67" class="tick">{esc(f"{name} {v:.1f} s")}</text>'
        )
        legend_x += 14 + 6.2 * len(f"{name} {v:.1f} s") + 18  # ~6 px a character at the 10 px tick font
        x += w
    parts.append("</svg>")
    return "".join(parts)


def forest_svg(items: Sequence[tuple[str, float, float, float, bool]]) -> str:
    """Differences B - A with their 95% CIs, one row each; green where B is better."""
    width = 560
    row_h = 30
    height = 40 + row_h * max(len(items), 1)
    pad_l, pad_r = 170, 20
    finite = [v for _, d, lo, hi, _ in items for v in (d, lo, hi) if not math.isnan(v)]
    ext = max((abs(v) for v in finite), default=1.0) or 1.0
    ext *= 1.1
    plot_w = width - pad_l - pad_r

    def xpos(v: float) -> float:
        return pad_l + plot_w * (v + ext) / (2 * ext)

    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="differences">']
    zx = xpos(0)
    parts.append(f'<line x1="{zx:.1f}" y1="8" x2="{zx:.1f}" y2="{height - 22}" stroke="#adb5bd"/>')
    parts.append(f'<text x="{zx:.1f}" y="{height - 6}" text-anchor="middle" class="tick">0</text>')
    parts.append(f'<text x="{xpos(-ext):.1f}" y="{height - 6}" class="tick">{-ext:+.3g}</text>')
    parts.append(
        f'<text x="{xpos(ext):.1f}" y="{height - 6}" text-anchor="end" class="tick">{ext:+.3g}</text>'
    )
    for i, (label, d, lo, hi, b_better) in enumerate(items):
        y = 24 + i * row_h
        color = "#2b8a3e" if b_better else "#c92a2a"
        parts.append(f'<text x="{pad_l - 8}" y="{y + 4}" text-anchor="end" class="tick">{esc(label)}</text>')
        if math.isnan(d):
            continue
        parts.append(
            f'<line x1="{xpos(lo):.1f}" y1="{y}" x2="{xpos(hi):.1f}" y2="{y}" stroke="{color}" '
            'stroke-width="3">'
            f"<title>{esc(f'{label}: {d:+.4f} [{lo:+.4f}, {hi:+.4f}]')}</title></line>"
            f'<circle cx="{xpos(d):.1f}" cy="{y}" r="5" fill="{color}"/>'
        )
    parts.append("</svg>")
    return "".join(parts)


def scatter_svg(xs: Sequence[float], ys: Sequence[float], *, x_label: str, y_label: str, hi: float) -> str:
    width, height = 420, 360
    pad_l, pad_r, pad_t, pad_b = 46, 14, 14, 44
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b
    hi = hi if hi > 0 else 1.0

    def px(v: float) -> float:
        return pad_l + plot_w * min(max(v, 0.0), hi) / hi

    def py(v: float) -> float:
        return pad_t + plot_h * (1 - min(max(v, 0.0), hi) / hi)

    parts = [f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="per-sample scatter">']
    parts.append(
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#e3e6ee"/>'
        f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" stroke="#adb5bd" '
        f'stroke-dasharray="4 3"/>'
    )
    for x, y in zip(xs, ys, strict=True):
        parts.append(
            f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="#3b5bdb" fill-opacity="0.55"/>'
        )
    parts.append(
        f'<text x="{pad_l}" y="{height - 26}" class="tick">0</text>'
        f'<text x="{width - pad_r}" y="{height - 26}" text-anchor="end" class="tick">{hi:g}</text>'
        f'<text x="{pad_l + plot_w / 2}" y="{height - 8}" text-anchor="middle" class="axis">'
        f"{esc(x_label)}</text>"
        f'<text x="12" y="{pad_t + plot_h / 2}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 12 {pad_t + plot_h / 2})">{esc(y_label)}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------- run report pieces

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


def dataset_label(data: RunData) -> str:
    ds = data.metrics.get("dataset")
    if isinstance(ds, dict) and ds.get("name"):
        return f"{ds.get('name')}@{ds.get('version')}"
    value = data.run.get("dataset")
    return str(value.get("name") if isinstance(value, dict) else value or "")


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


def timing_section(data: RunData) -> str:
    run = data.run
    n = num(data.metrics.get("n")) or 0
    throughput = num(run.get("throughput_samples_per_s"))
    inference = num(run.get("inference_s"))
    if throughput is None and inference and n:
        throughput = n / inference
    rows = []
    for label, key in TIMING_KEYS:
        v = num(run.get(key))
        if v is None and key == "sync_s":
            rows.append(f"<tr><td>{esc(label)}</td><td class='num muted'>not recorded</td></tr>")
        elif v is not None:
            rows.append(f"<tr><td>{esc(label)}</td><td class=num>{v:,.2f} s</td></tr>")
    phases = timing_phases(run)
    if phases:
        rows.append(
            "<tr><td><b>Total, wall clock</b></td>"
            f"<td class=num><b>{sum(v for _, v in phases):,.2f} s</b></td></tr>"
        )
    rows.append(
        f"<tr><td>Throughput</td><td class=num>"
        f"{f'{throughput:,.2f} samples/s' if throughput is not None else '–'}</td></tr>"
    )
    gpu_s = num(run.get("gpu_seconds"))
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


def gallery_card(
    data_dir: Path, r: dict[str, Any], pred_row: dict[str, Any], metric_name: str, *, badge: str = ""
) -> str:
    sid = str(r.get("id"))
    reference = str(r.get("reference") or "")
    answers = r.get("answers")
    prediction = r.get("prediction")
    if prediction is None and not pred_row.get("error"):
        prediction = pred_row.get("prediction")
    error = r.get("error") or pred_row.get("error")
    img_path = safe_image_path(data_dir, r.get("image"))
    uri = thumbnail_data_uri(img_path) if img_path else None
    img_html = f'<img src="{uri}" alt="{esc(sid)}">' if uri else '<div class="noimg">no preview</div>'
    question = r.get("question")
    q_html = f'<div class="lbl">question</div><div class="txt">{esc(question)}</div>' if question else ""
    gt_label = "ground truth"
    if isinstance(answers, list) and len(answers) > 1:
        gt_label = f"ground truth (1 of {len(answers)}: {esc(clip(' | '.join(map(str, answers[1:6])), 200))})"
    pred_text = "" if prediction is None else str(prediction)
    if prediction is None:
        pred_html = '<div class="txt muted">none: the sample failed, scored as the worst value</div>'
    elif not pred_text:
        pred_html = '<div class="txt muted">(empty string)</div>'
    else:
        pred_html = f'<div class="txt">{esc(clip(pred_text))}</div>'
    err_html = (
        f'<div class="lbl">error</div><div class="txt err">{esc(clip(str(error)))}</div>' if error else ""
    )
    score = r.get(metric_name)
    return (
        f'<div class="sample"><div class="head"><span>{esc(sid)}{badge}</span>'
        f'<span class="score">{esc(metric_name.upper())} {esc(fmt_num(score))}</span></div>'
        f"{img_html}<div class=body>{q_html}"
        f'<div class="lbl">{gt_label}</div><div class="txt">{esc(clip(reference))}</div>'
        f'<div class="lbl">prediction</div>{pred_html}'
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


def page(title: str, subtitle: str, kpis: list[tuple[str, str]], sections: list[tuple[str, str]]) -> str:
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    kpi_html = "".join(
        f'<div class="kpi"><div class="v">{esc(v)}</div><div class="k">{esc(k)}</div></div>' for k, v in kpis
    )
    body = "".join(f"<section><h2>{h}</h2>{content}</section>" for h, content in sections)
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{esc(title)}</title><style>{CSS}{CSS_EXTRA}</style></head>
<body><header><h1>{esc(title)}</h1><div class="sub">{subtitle}</div>
<div class="kpis">{kpi_html}</div></header>
<main>{body}</main><footer>generated by hyperbench/report at {esc(generated)}</footer></body></html>
"""


def build_report(data_dir: Path, inp: Path) -> str:
    data = load_run(inp)
    metric_name, lower_better = primary_metric(data.metrics)
    pred_by_id = {str(p.get("id")): p for p in data.predictions}
    run = data.run

    kpis = [(name.upper(), fmt_pct(m.get("value"))) for name, m in data.metric_values.items()][:6]
    kpis.append(("Samples", fmt_num(data.metrics.get("n"))))
    kpis.append(("Failed", fmt_num(data.metrics.get("errors"))))
    thr = num(run.get("throughput_samples_per_s"))
    if thr is not None:
        kpis.append(("Samples/s", f"{thr:,.2f}"))

    scores = [v for r in data.per_sample if (v := num(r.get(metric_name))) is not None]
    hi = 1.0 if not lower_better else max(1.0, min(max(scores, default=1.0), 3.0))
    score_chart = histogram_svg(
        scores,
        bins=20,
        lo=0.0,
        hi=hi,
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

    def badness(r: dict[str, Any]) -> float:
        v = num(r.get(metric_name))
        if v is None:
            return math.inf
        return v if lower_better else -v

    worst = sorted(data.per_sample, key=badness, reverse=True)[:GALLERY_SIZE]
    cards = "".join(
        gallery_card(data_dir, r, pred_by_id.get(str(r.get("id")), {}), metric_name) for r in worst
    )

    title = (
        f"HyperBench report · run {run.get('run_id')}"
        if run.get("run_id") is not None
        else "HyperBench report"
    )
    model = run.get("model") if not isinstance(run.get("model"), dict) else run["model"].get("name")
    subtitle = " · ".join(esc(x) for x in (model, dataset_label(data)) if x)
    sections = [
        ("Summary", summary_table(data)),
        ("Metrics", metric_table(data, metric_name)),
        (
            "Distributions",
            f'<div class="charts">{score_chart}{group_chart}{lat_chart}</div>',
        ),
        ("Timing and throughput", timing_section(data)),
        (f"Worst {len(worst)} samples by {esc(metric_name.upper())}", f'<div class="gallery">{cards}</div>'),
        ("Failed samples", errors_section(data.per_sample)),
    ]
    return page(title, subtitle, kpis, sections)


# ---------------------------------------------------------------- comparison


def _natural_key(name: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def load_runs(runs_dir: Path) -> list[RunData]:
    dirs = sorted((p for p in runs_dir.iterdir() if p.is_dir()), key=lambda p: _natural_key(p.name))
    runs = [load_run(d, d.name) for d in dirs]
    if len(runs) < 2:
        raise ValueError(f"{runs_dir}: a comparison needs at least two run directories, found {len(runs)}")
    return runs


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


def short_digest(value: object) -> str:
    text = str(value or "–")
    if len(text) <= 23:
        return esc(text)
    return f'<code title="{esc(text)}">{esc(text[:19])}…</code>'


def build_comparison(data_dir: Path, runs_dir: Path) -> str:
    runs = load_runs(runs_dir)
    check_comparable(runs)
    base = runs[0]
    primary, lower_better = primary_metric(base.metrics)
    metric_names = [m for m in base.metric_values if all(m in r.metric_values for r in runs[1:])]

    # align samples by id (manifest order of the baseline)
    maps = [{str(r.get("id")): r for r in run.per_sample} for run in runs]
    common = [sid for sid in maps[0] if all(sid in m for m in maps[1:])]
    warn = ""
    if any(len(m) != len(common) for m in maps):
        warn = (
            f'<div class="warn">Only the {len(common)} samples present in every run are compared '
            f"(runs have {', '.join(str(len(m)) for m in maps)} samples).</div>"
        )
    aligned = [[m[sid] for sid in common] for m in maps]
    resamples = hb_stats.BOOTSTRAP_RESAMPLES
    seed = hb_stats.BOOTSTRAP_SEED

    # per-metric table: every run's value [CI], then each run vs the baseline
    head = "".join(
        f"<th>{esc(chr(65 + i) if i < 26 else i)}: {esc(r.label)}</th>" for i, r in enumerate(runs)
    )
    rows = []
    for name in metric_names:
        cells = []
        for r in runs:
            m = r.metric_values[name]
            ci = m.get("ci95") or [None, None]
            cells.append(
                f"<td class=num>{esc(fmt_num(m.get('value')))} "
                f"<span class=muted>[{esc(fmt_num(ci[0]))}, {esc(fmt_num(ci[1]))}]</span></td>"
            )
        tag = '<span class="tag">primary</span>' if name == primary else ""
        rows.append(f"<tr><td>{esc(name)}{tag}</td>{''.join(cells)}</tr>")
    values_table = f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"

    tests_html = []
    forest_items: list[tuple[str, float, float, float, bool]] = []
    test_rows_all: list[str] = []
    primary_delta: float | None = None
    for bi in range(1, len(runs)):
        letter = chr(65 + bi) if bi < 26 else str(bi)
        for name in metric_names:
            sa = hb_stats.statistic_for(name, aligned[0])
            sb = hb_stats.statistic_for(name, aligned[bi])
            if sa is None or sb is None:
                continue
            lb = hb_stats.lower_is_better(name)
            res = hb_stats.paired_bootstrap(
                sa, sb, len(common), lower_better=lb, resamples=resamples, seed=seed
            )
            d, (lo, hi) = res["delta"], res["ci95"]
            if bi == 1 and name == primary:
                primary_delta = d
            p_b = res["prob_b_better"]
            b_better = (d < 0) if lb else (d > 0)
            significant = res["p_value"] < 0.05
            if abs(d) < 1e-12:
                verdict = "no difference"
                cls = "muted"
            elif significant:
                verdict = f"{letter} better" if b_better else "A better"
                cls = "better" if b_better else "worse"
            else:
                verdict = "not significant"
                cls = "muted"
            p_val = res["p_value"]
            p_txt = f"&lt; {1 / resamples:g}" if p_val == 0 else f"{p_val:.4f}"
            test_rows_all.append(
                f"<tr><td>{letter} − A</td><td>{esc(name)}</td><td class=num>{d:+.4f}</td>"
                f"<td class=num>[{lo:+.4f}, {hi:+.4f}]</td><td class=num>{p_txt}</td>"
                f"<td class=num>{p_b:.1%}</td><td class={cls}>{esc(verdict)}</td></tr>"
            )
            forest_items.append((f"{letter}−A {name}", d, lo, hi, b_better))
    tests_html.append(
        "<table><tr><th>pair</th><th>metric</th><th>difference</th><th>95% CI</th><th>p-value</th>"
        "<th>P(better than A)</th><th>verdict (α = 0.05)</th></tr>" + "".join(test_rows_all) + "</table>"
        f"<p class=muted>Paired bootstrap over the {len(common)} samples both runs scored: {resamples} "
        f"resamples (seed {seed}) draw the same sample indices for both runs; the difference is "
        "recomputed exactly as the metric (corpus ratio for CER/WER, mean otherwise). P(B better) = share "
        "of resamples in which B beats A (ties count half); p-value = 2 × min(P(Δ ≤ 0), P(Δ ≥ 0)). "
        "For cer/wer/ned lower is better, so a negative difference favours B.</p>"
    )
    forest = forest_svg(forest_items)

    # scatter of the primary metric, baseline vs the first challenger
    xs = [v if (v := num(r.get(primary))) is not None else 0.0 for r in aligned[0]]
    ys = [v if (v := num(r.get(primary))) is not None else 0.0 for r in aligned[1]]
    hi_axis = 1.0 if not lower_better else max(1.0, min(max(xs + ys, default=1.0), 3.0))
    scatter = scatter_svg(
        xs, ys, x_label=f"A: {primary} per sample", y_label=f"B: {primary} per sample", hi=hi_axis
    )

    # the samples where the runs disagree most on the primary metric
    spreads = []
    for j, sid in enumerate(common):
        vals = [num(a[j].get(primary)) for a in aligned]
        clean = [v if v is not None else (1.0 if lower_better else 0.0) for v in vals]
        spreads.append((max(clean) - min(clean), sid, j))
    spreads.sort(key=lambda t: (-t[0], t[1]))
    preds = [{str(p.get("id")): p for p in run.predictions} for run in runs]
    cards = []
    for spread, sid, j in spreads[:DISAGREE_SIZE]:
        if spread <= 0:
            break
        r0 = aligned[0][j]
        img_path = safe_image_path(data_dir, r0.get("image"))
        uri = thumbnail_data_uri(img_path) if img_path else None
        img_html = f'<img src="{uri}" alt="{esc(sid)}">' if uri else '<div class="noimg">no preview</div>'
        reference = str(r0.get("reference") or "")
        question = r0.get("question")
        q_html = f'<div class="lbl">question</div><div class="txt">{esc(question)}</div>' if question else ""
        cols = []
        for i, run in enumerate(runs):
            row = aligned[i][j]
            pred = row.get("prediction")
            if pred is None and not row.get("error"):
                pred = preds[i].get(sid, {}).get("prediction")
            text = "" if pred is None else str(pred)
            err = row.get("error")
            letter = chr(65 + i) if i < 26 else str(i)
            cols.append(
                f'<div class="run-col"><div class="rh"><span>{esc(letter)}: {esc(run.label)}</span>'
                f"<span>{esc(primary)} {esc(fmt_num(row.get(primary)))}</span></div>"
                + (f'<div class="txt err">{esc(clip(str(err), 300))}</div>' if err else "")
                + f'<div class="lbl">prediction vs ground truth (<del>missing</del> <ins>extra</ins>)</div>'
                f'<div class="txt">{char_diff_html(clip(reference), clip(text))}</div></div>'
            )
        cards.append(
            f'<div class="sample"><div class="head"><span>{esc(sid)}</span>'
            f'<span class="score">spread {esc(fmt_num(spread))}</span></div>{img_html}'
            f'<div class="body">{q_html}<div class="lbl">ground truth</div>'
            f'<div class="txt">{esc(clip(reference))}</div>'
            f'<div class="lbl">runs</div><div class="runs">{"".join(cols)}</div></div></div>'
        )
    disagree = (
        f'<div class="gallery wide cmp">{"".join(cards)}</div>'
        if cards
        else "<p class=muted>The runs agree on every sample.</p>"
    )

    runs_table = "".join(
        f"<tr><td>{esc(chr(65 + i) if i < 26 else i)}</td><td>{esc(r.label)}</td>"
        f"<td>{short_digest(r.run.get('image_digest'))}</td>"
        f"<td>{render_value(r.run.get('params', {}))}</td><td>{esc(r.run.get('prompt') or '')}</td>"
        f"<td class=num>{esc(fmt_num(r.metrics.get('errors')))}</td>"
        f"<td class=num>{esc(fmt_num(num(r.run.get('throughput_samples_per_s'))))}</td></tr>"
        for i, r in enumerate(runs)
    )
    runs_html = (
        "<table><tr><th></th><th>run</th><th>image digest</th><th>params</th><th>prompt</th>"
        f"<th>failed</th><th>samples/s</th></tr>{runs_table}</table>"
        f"<p class=muted>dataset {esc(dataset_label(base))}, manifest "
        f"{esc(base.run.get('manifest_sha256') or 'not recorded')}, metric version "
        f"{esc(base.metrics.get('metric_version'))}, {len(common)} samples compared</p>"
    )
    kpis = [("Runs", str(len(runs))), ("Samples", f"{len(common):,}"), ("Primary", primary.upper())]
    if primary_delta is not None:
        kpis.append((f"Δ {primary.upper()} (B − A)", f"{primary_delta:+.4f}"))
    sections = [
        ("Runs", warn + runs_html),
        ("Metrics", values_table),
        (
            "Is B really better? Paired bootstrap",
            "".join(tests_html) + f'<div class="charts">{forest}{scatter}</div>',
        ),
        (f"Where the runs disagree most ({esc(primary)})", disagree),
    ]
    title = f"HyperBench comparison · {dataset_label(base)}"
    subtitle = " vs ".join(esc(r.label) for r in runs)
    return page(title, subtitle, kpis, sections)


# ---------------------------------------------------------------- entrypoint


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the host side reads these files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main() -> int:
    inp = input_dir()
    runs_dir = inp / "runs"
    compare = runs_dir.is_dir()
    if not compare and not (inp / "metrics.json").is_file():
        print(f"hyperbench-report: ERROR: {inp / 'metrics.json'} not found", file=sys.stderr)
        return 2
    try:
        html_page = build_comparison(data_dir(), runs_dir) if compare else build_report(data_dir(), inp)
        out = output_dir() / "report.html"
        atomic_write(out, html_page)
    except (OSError, ValueError) as exc:
        print(f"hyperbench-report: ERROR: {exc}", file=sys.stderr)
        return 2
    mode = "comparison" if compare else "run"
    print(f"hyperbench-report: wrote {mode} report {out} ({len(html_page):,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
