"""HyperBench report: one self-contained HTML file for a run, or a comparison of runs.

Modules, one purpose each:
  inputs      paths (HB_* overrides), a run's files (RunData), comparability, primary metric
  text        escaping, number formats, run letters (A, B, ...), clipping, character diff
  thumbs      sample images: safe paths, JPEG thumbnails as data: URIs
  charts      pure SVG charts (histogram, bars, timing, forest, scatter)
  page        CSS and the HTML frame
  run_report  the run report
  stats       a comparison's statistics (alignment, paired bootstrap, disagreement), no HTML
  comparison  the comparison report
  cli         main(): mode by the mounts, atomic write of report.html

Imports `hb_stats` (aggregates, bootstrap) and `hb_io` (atomic_write) from the eval image's
directory: beside this package in the image (/opt/hyperbench), images/eval on sys.path in tests.
"""

from hb_report.cli import main
from hb_report.comparison import build_comparison
from hb_report.inputs import RunData, check_comparable, load_run, load_runs
from hb_report.run_report import (
    build_report,
    length_buckets,
    summary_table,
    timing_phases,
    timing_section,
)

__all__ = [
    "RunData",
    "build_comparison",
    "build_report",
    "check_comparable",
    "length_buckets",
    "load_run",
    "load_runs",
    "main",
    "summary_table",
    "timing_phases",
    "timing_section",
]
