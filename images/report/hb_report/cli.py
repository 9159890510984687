"""The entrypoint: the mode comes from the mounts (/job/input/runs/ present = comparison)."""

from __future__ import annotations

import sys

from hb_io import atomic_write

from hb_report.comparison import build_comparison
from hb_report.inputs import data_dir, input_dir, output_dir
from hb_report.run_report import build_report


def main() -> int:
    """Write report.html; 0 when written, 2 on unusable input (message on stderr, nothing written)."""
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
