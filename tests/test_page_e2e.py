"""A `page` run end to end: rendered pages -> the doc-rapid image (rapid-layout + RapidOCR) through
the API, the real host worker, Docker, the eval image's page metrics and the report.

Needs the built images (`make images`: doc-rapid, eval, report). FAILS, never skips, when one is missing.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from urllib.parse import urlparse

import pytest
from rest_framework.test import APIClient

from apps.runs.models import Run
from hyperbench_web.devstack import Stack
from tests.conftest import (
    IMAGE_VERSION,
    create_experiment,
    load_script,
    register_dataset,
    register_model,
    start_run,
    wait_for_run,
)
from worker import validate_image

pytestmark = pytest.mark.docker

PAGES = 4
# Measured on these 4 pages (seed 7) with doc-rapid 0.1.0 on CPU: page_ned 0.028 (three pages
# within 0.004, one at 0.109 where PP-OCR's small recogniser garbles one long line), every table
# found, table_teds 0.90 (0.86-0.93 a table: SLANet-plus gets every row, column and cell text right
# but never predicts <thead>, which the ground truth's header row has). The floors leave room for
# onnxruntime's thread-level noise but fail on a real break: one paragraph left out of a page is
# ~0.25 of its text, blocks read in the wrong order cost more, a lost row of a 3-row table ~0.25
# of its TEDS, and a table cut into lines scores no TEDS at all.
PAGE_NED_MAX = 0.08
TABLE_TEDS_MIN = 0.8
TABLES_FOUND_MIN = 0.75  # 3 of the 4 pages


def test_a_page_run_on_doc_rapid_parses_rendered_pages_to_markdown(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    ref, digest = f"hyperbench/doc-rapid:{IMAGE_VERSION}", images["doc-rapid"]
    ds = roots["datasets"] / "sample-pages" / "1"
    load_script("make_doc_datasets").write_dataset("page", ds, PAGES, 7)
    register_model(as_staff, "doc-rapid", ref, digest)
    dataset = register_dataset(as_alice, ds)
    assert (dataset["task"], dataset["sample_count"]) == ("page", PAGES)
    run_id = start_run(as_alice, create_experiment(as_alice, "doc-rapid", dataset["id"]))

    data = wait_for_run(as_alice, run_id)

    assert data["state"] == "succeeded", data["error_reason"]
    run = Run.objects.get(pk=run_id)
    assert run.metrics is not None
    assert (run.metrics["n"], run.metrics["errors"]) == (PAGES, 0)
    metrics = run.metrics["metrics"]
    print({k: v["value"] for k, v in metrics.items()})
    assert set(metrics) >= {"page_ned", "table_teds", "table_teds_struct", "tables_found"}
    for name in ("page_ned", "table_teds", "table_teds_struct", "tables_found"):
        value = metrics[name]["value"]
        lo, hi = metrics[name]["ci95"]
        assert 0.0 <= lo <= value <= hi <= 1.0, (name, metrics[name])
    assert metrics["page_ned"]["value"] <= PAGE_NED_MAX, metrics
    assert metrics["table_teds"]["value"] >= TABLE_TEDS_MIN, metrics
    assert metrics["table_teds_struct"]["value"] >= TABLE_TEDS_MIN, metrics
    assert metrics["tables_found"]["value"] >= TABLES_FOUND_MIN, metrics
    assert run.image_digest == digest
    predictions = [
        json.loads(line) for line in Path(urlparse(run.predictions_uri).path).read_text().splitlines()
    ]
    assert sorted(p["id"] for p in predictions) == [f"page-{i:04d}" for i in range(PAGES)]
    for p in predictions:
        assert p["error"] is None, p
        assert p["prediction"].startswith("# "), p  # the page's title, as a Markdown heading
        assert "<table>" in p["prediction"], p  # its table, as rapid-table's HTML
    html = Path(urlparse(run.report_uri).path).read_text(encoding="utf-8")
    assert "page_ned" in html
    assert "table_teds" in html
    # The gallery: per worst page, the line diff of the two Markdown texts and its scores.
    cards = html.count('<div class="sample">')
    assert cards == min(8, PAGES)
    assert html.count('<div class="txt ldiff">') == cards
    assert html.count("page NED ") == cards
    assert "<script" not in html
    assert as_alice.get(f"/api/v1/runs/{run_id}/report/").status_code == 200


def test_validate_image_passes_doc_rapid_on_the_page_task(images: dict[str, str]) -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = validate_image.main([f"hyperbench/doc-rapid:{IMAGE_VERSION}", "--task", "page"])
    out = buf.getvalue()
    print(out)
    assert code == 0, out
    assert "RESULT: PASS" in out
    assert "--network none" in out
