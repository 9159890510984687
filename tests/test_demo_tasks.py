"""``make demo TASK=...``: the task table of hyperbench_web/demo.py (the runs themselves are the demo's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hyperbench_web import demo
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_every_demo_task_names_a_generator_an_image_and_the_eval_s_metrics_of_its_task() -> None:
    assert set(demo.DEMOS) >= {"ocr", "page", "kie"}
    assert demo._parser().parse_args([]).task == "ocr"  # the default stays ocr
    eval_src = (ROOT / "images" / "eval" / "evaluate.py").read_text() + "".join(
        p.read_text() for p in (ROOT / "images" / "eval").glob("hb_*.py")
    )
    for name, task in demo.DEMOS.items():
        assert (ROOT / "scripts" / task.generator[0]).is_file(), name
        assert (ROOT / "images" / task.image / "Dockerfile").is_file(), name
        for metric in task.metrics:
            assert f'"{metric}"' in eval_src, (name, metric)


def test_the_kie_demo_refuses_to_start_without_a_vlm_endpoint_and_says_what_to_set() -> None:
    with pytest.raises(demo.DemoError) as err:
        demo._endpoint_fields({"HB_OPENAI_MODEL": "m"})
    assert "HB_OPENAI_BASE_URL" in str(err.value)
    assert "does not fake one" in str(err.value)
    assert demo._endpoint_fields(
        {"HB_OPENAI_BASE_URL": "http://127.0.0.1:8001/v1", "HB_OPENAI_MODEL": "m"}
    ) == {
        "endpoint_base_url": "http://127.0.0.1:8001/v1",
        "endpoint_model": "m",
    }
    with_key = demo._endpoint_fields(
        {"HB_OPENAI_BASE_URL": "http://127.0.0.1:8001/v1", "HB_OPENAI_MODEL": "m", "HB_OPENAI_API_KEY": "k"}
    )
    assert with_key["endpoint_api_key_env"] == "HB_OPENAI_API_KEY"  # the name, never the key


def test_the_kie_demo_prompt_names_the_fields_of_its_dataset(tmp_path: Path) -> None:
    load_script("make_doc_datasets").write_dataset("kie", tmp_path / "1", 2, 7)
    row = json.loads((tmp_path / "1" / "manifest.jsonl").read_text().splitlines()[0])
    for key in [*row["fields"], *row["fields"]["items"][0]]:
        assert f'"{key}"' in demo.KIE_PROMPT, key


def test_the_demo_s_last_line_carries_the_task_s_metrics() -> None:
    metrics = {"page_ned": {"value": 0.027956}, "table_teds": {"value": 1.0}}
    assert demo._metrics_line(("page_ned", "table_teds", "tables_found"), metrics) == (
        "page_ned=0.0280 table_teds=1.0000 tables_found=n/a"
    )
