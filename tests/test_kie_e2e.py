"""A `kie` run end to end through the API: generated receipts -> vlm-openai (JSON mode) against the
loopback OpenAI-compatible server of tests/fake_openai.py -> the eval image's KIE metrics -> the report.

The server answers with the receipt's own ground truth, so this checks the chain (the experiment's
prompt and response_format reach the endpoint, the answer is scored as JSON), not a model: no
offline KIE model exists (README.md, `make demo TASK=kie`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import FakeOpenAI
from rest_framework.test import APIClient

from apps.runs.models import Run
from hyperbench_web.devstack import Stack
from tests.conftest import (
    IMAGE_VERSION,
    load_script,
    register_dataset,
    start_run,
    stored_artifact,
    wait_for_run,
)

pytestmark = pytest.mark.docker


def test_a_kie_run_sends_the_prompt_in_json_mode_and_scores_the_answer_as_fields(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    ds = roots["datasets"] / "receipts" / "1"
    load_script("make_doc_datasets").write_dataset("kie", ds, 1, 7)
    fields = json.loads((ds / "manifest.jsonl").read_text().splitlines()[0])["fields"]
    dataset = register_dataset(as_alice, ds)
    assert dataset["task"] == "kie"
    prompt = "Extract store, date, items (name, qty, price) and total as one JSON object."
    with FakeOpenAI(reply="```json\n" + json.dumps(fields) + "\n```") as srv:
        r = as_staff.post(
            "/api/v1/models/",
            {
                "name": "vlm-kie",
                "image": f"hyperbench/vlm-openai:{IMAGE_VERSION}",
                "digest": images["vlm-openai"],
                "endpoint_base_url": srv.base_url,
                "endpoint_model": "served-model",
            },
            format="json",
        )
        assert r.status_code == 201, r.content
        body = {"name": "kie", "model": "vlm-kie", "dataset": dataset["id"], "params": {}, "prompt": prompt}
        r = as_alice.post("/api/v1/experiments/", body, format="json")
        assert r.status_code == 201, r.content
        data = wait_for_run(as_alice, start_run(as_alice, int(r.json()["id"])))

    assert data["state"] == "succeeded", data["error_reason"]
    assert srv.state.prompts == [prompt]
    assert srv.state.response_formats == [{"type": "json_object"}]  # json_mode auto, the kie default
    run = Run.objects.get(pk=data["id"])
    assert run.metrics is not None
    metrics = run.metrics["metrics"]
    # The fenced answer is the ground truth: every field found, the tree identical.
    assert metrics["field_f1"]["value"] == 1.0, metrics
    assert metrics["nted_accuracy"]["value"] == 1.0, metrics
    line = json.loads(stored_artifact(data["id"]).read_text().splitlines()[0])
    assert line["json_mode"] is True
    report = stored_artifact(data["id"], "report_uri").read_text(encoding="utf-8")
    assert report.count("field_f1") >= 1
    # The gallery's field table: every field found, so no row is marked.
    assert report.count("<table class=fields>") == report.count('<div class="sample">') >= 1
    assert "field F1 1.0000" in report
    assert "<tr class=bad>" not in report
