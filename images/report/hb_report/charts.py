"""Charts: pure functions from numbers to inline SVG (styled by the page's CSS classes)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from hb_report.text import esc


def empty_chart(width: int, height: int, label: str, text: str) -> str:
    """A chart's frame with a centred note (no data) instead of marks."""
    return (
        f'<svg viewBox="0 0 {width} {height}" class="chart" role="img" aria-label="{esc(label)}">'
        f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="muted">{esc(text)}</text></svg>'
    )


def score_axis_max(values: Sequence[float], lower_better: bool) -> float:
    """Upper end of a per-sample score axis: 1 for scores, up to 3 for error rates (which may pass 1)."""
    return 1.0 if not lower_better else max(1.0, min(max(values, default=1.0), 3.0))


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
        return empty_chart(width, height, label, "no data")
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
        return empty_chart(width, height, title, "no data")
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
        return empty_chart(width, height, "timing", "no timings")
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
