"""The admin's run and host pages as a person sees them: in headless Chromium, logged in through
the admin's login form. A run page shows its metrics (CIs, directions), shards with their hosts,
events as a timeline, links to the report, the samples and the artifacts, the spec folded; a host
page shows GPU and cache bars and what runs there; a silent host stands out in the list. What users
and hosts wrote (model names, event messages and data) is shown as text, never run as HTML.

Screenshots go to HB_TEST_SCREENSHOT_DIR when set (else the test's tmp dir), to be looked at."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from apps.catalog.models import Dataset, ModelImage
from apps.hosts.models import Host
from apps.runs.models import Experiment, Run, RunEvent, RunShard
from tests.admin_browser import Browser

EVIL = '<script>window.hbPwned = 1</script><img src=x onerror="window.hbPwned = 2">'
GPU_HOST = "gpu-node-1"
# Whether the EVIL markup ran (a script, an onerror) or became an element, and the page's text.
PROBE = """({pwned: window.hbPwned || 0, text: document.body.innerText,
    imgs: [...document.querySelectorAll('img')].filter(i => i.getAttribute('src') === 'x').length})"""


def _shots(tmp_path: Path) -> Path:
    return Path(os.environ.get("HB_TEST_SCREENSHOT_DIR") or tmp_path / "shots")


def _run(owner: User, artifacts: Path, *, model_name: str = "tesseract-5", message: str = "") -> Run:
    dataset = Dataset.objects.create(
        name="invoices", version="3", task="ocr", source_uri="file:///srv/datasets/invoices/3/",
        manifest_sha256="a" * 64, sample_count=120,
    )  # fmt: skip
    model = ModelImage.objects.create(
        name=model_name, image="hyperbench/ocr-tesseract:1", digest="sha256:" + "b" * 64
    )
    exp = Experiment.objects.create(
        name="tesseract baseline", model=model, dataset=dataset, owner=owner,
        params={"psm": 6, "lang": "eng+deu"}, prompt="Read the text.",
    )  # fmt: skip
    base = artifacts / "runs" / "1"
    base.mkdir(parents=True, exist_ok=True)
    (base / "report.html").write_text("<!doctype html><title>report</title><h1>The report</h1>")
    (base / "metrics.json").write_text("{}")
    (base / "per_sample.jsonl").write_text("")
    run = Run.objects.create(
        experiment=exp,
        state=Run.State.SUCCEEDED,
        spec={"run_id": 1, "image": "hyperbench/ocr-tesseract:1", "shards": 2, "params": {"psm": 6}},
        manifest_sha256="a" * 64,
        progress_done=120,
        progress_total=120,
        metric_version="1.2",
        image_digest="sha256:" + "b" * 64,
        inference_s=84.2,
        gpu_seconds=84.2,
        stage_attempt=2,
        started_at=timezone.now() - timedelta(minutes=5),
        finished_at=timezone.now(),
        metrics_uri=(base / "metrics.json").as_uri(),
        per_sample_uri=(base / "per_sample.jsonl").as_uri(),
        report_uri=(base / "report.html").as_uri(),
        metrics={
            "metrics": {
                "cer": {"value": 0.0412, "ci95": [0.0301, 0.0533]},
                "wer": {"value": 0.1187, "ci95": [0.0944, 0.1421]},
                "exact_match": {"value": 0.55, "ci95": [0.46, 0.64]},
            },
            "primary_metric": "cer",
            "lower_is_better": ["cer", "wer"],
            "n": 120,
            "errors": 1,
            "missing": 0,
            "latency_ms": {"mean": 701.5, "p50": 650.0, "p95": 1200.25, "max": 1502.0},
        },
    )
    RunShard.objects.create(run=run, index=0, attempt=1, state="succeeded", host=GPU_HOST, done=60, total=60)
    RunShard.objects.create(
        run=run, index=1, attempt=2, state="succeeded", host="cpu-node-2", done=60, total=60, errors=1
    )
    for kind, stage, shard, host, msg, data in [
        ("queued", "infer", 0, "", "Shard 0 queued", None),
        ("started", "infer", 0, GPU_HOST, "Container started on GPU 0", {"gpus": ["0"]}),
        ("progress", "sync", 1, "cpu-node-2", "Syncing the dataset",
         {"phase": "fetch", "files_done": 40, "files_total": 120, "bytes_done": 4_000_000,
          "bytes_total": 12_000_000, "fetched_files": 40, "fetched_bytes": 4_000_000, "rate_bps": 2_000_000}),
        ("retried", "infer", 1, "cpu-node-2", message or "Attempt 1 lost: the host restarted",
         {"attempt": 1}),
        ("succeeded", "report", None, GPU_HOST, "Report written", None),
    ]:  # fmt: skip
        RunEvent.objects.create(
            run=run, kind=kind, stage=stage, shard=shard, host=host, message=msg, data=data
        )
    return run


def _hosts(run_id: int) -> tuple[Host, Host]:
    now = timezone.now()
    live = Host.objects.create(
        name=GPU_HOST, worker=f"host@{GPU_HOST}", instance="9f1c2d3e4b5a", queue=f"host.{GPU_HOST}",
        dataset_roots=["file:///srv/datasets/"], slots=2, active=1, last_seen=now - timedelta(seconds=12),
        nvml=True,
        gpus=[
            {"index": 0, "uuid": "GPU-0a1b", "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559,
             "memory_used_mb": 61234, "utilization_pct": 87, "temperature_c": 64},
            {"index": 1, "uuid": "GPU-2c3d", "name": "NVIDIA H100 80GB HBM3", "memory_total_mb": 81559,
             "memory_used_mb": 512, "utilization_pct": 0, "temperature_c": 31},
        ],
        cache=[{"name": "invoices", "version": "3", "manifest_sha256": "a" * 64, "bytes": 3 * 2**30,
                "last_used": time.time() - 60, "in_use": True}],
        cache_bytes=3 * 2**30, cache_budget_bytes=10 * 2**30,
        running=[{"run": run_id, "shard": 0, "stage": "infer", "gpus": ["0"],
                  "started": "2024-05-01T12:00:00.123456789Z"}],
    )  # fmt: skip
    silent = Host.objects.create(
        name="cpu-node-2",
        worker="host@cpu-node-2",
        last_seen=now - timedelta(minutes=20),
        reported_at=now - timedelta(minutes=20),
        nvml=False,
    )
    return live, silent


def test_the_run_and_host_pages_in_chromium(
    admin_user: User, live_server: Any, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_ARTIFACTS_URI = (tmp_path / "artifacts").as_uri() + "/"
    run = _run(admin_user, tmp_path / "artifacts")
    live, _silent = _hosts(run.pk)
    shots = _shots(tmp_path)

    with Browser(tmp_path / "profile", height=1000) as b:
        b.login(live_server.url, "admin", "password")

        b.open(f"{live_server.url}/admin/runs/run/{run.pk}/change/")
        page: dict[str, Any] = b.evaluate("""(() => {
            const rows = (sel) => [...document.querySelectorAll(sel)].map(
                tr => [...tr.querySelectorAll('td')].map(td => td.innerText.trim()));
            const href = (sel) => document.querySelector(sel)?.getAttribute('href');
            return {
                metrics: rows('#hb-metrics tbody tr'), shards: rows('#hb-shards tbody tr'),
                events: rows('#hb-events tbody tr'), artifacts: rows('#hb-artifacts tbody tr'),
                report: href('#hb-report-link'), samples: href('#hb-samples-link'),
                specOpen: document.querySelector('#hb-spec').open,
                spec: document.querySelector('#hb-spec pre').textContent,
                params: document.querySelector('#hb-params pre').textContent,
                shardHostLink: href('#hb-shards tbody tr[data-shard="0"] td.hb-host a'),
                fields: document.querySelector('fieldset').innerText,
                artifactHref: href('#hb-artifacts a[href$="/artifacts/report/"]'),
            };
        })()""")
        b.screenshot(shots / "admin-run.png")
        report = b.evaluate(
            f"fetch('{page['report']}').then(r => r.status + ' ' + r.headers.get('content-type'))"
        )
        artifact = b.evaluate(f"fetch('{page['artifactHref']}').then(r => r.status)")

        b.open(f"{live_server.url}/admin/hosts/host/{live.pk}/change/")
        host: dict[str, Any] = b.evaluate("""(() => {
            const width = (el) => el ? el.querySelector('span').style.width : null;
            return {
                gpus: [...document.querySelectorAll('#hb-gpus tbody tr')].map(tr => ({
                    text: tr.innerText, memory: width(tr.querySelector('.hb-bar-memory')),
                    util: width(tr.querySelector('.hb-bar-util')),
                    memoryPx: tr.querySelector('.hb-bar-memory span').getBoundingClientRect().width,
                })),
                cache: width(document.querySelector('#hb-cache-usage .hb-bar-cache')),
                cacheText: document.querySelector('#hb-cache-usage').innerText,
                running: [...document.querySelectorAll('#hb-running tbody tr')].map(tr => tr.innerText),
                runLink: document.querySelector('#hb-running a')?.getAttribute('href'),
                fields: document.querySelector('fieldset').innerText,
            };
        })()""")
        b.screenshot(shots / "admin-host.png")

        b.open(f"{live_server.url}/admin/hosts/host/")
        listing: list[dict[str, Any]] = b.evaluate("""[...document.querySelectorAll('#result_list tbody tr')]
            .map(tr => ({text: tr.innerText, silent: !!tr.querySelector('.hb-silent'),
                    bg: getComputedStyle(tr.querySelector('td')).backgroundColor}))""")
        b.screenshot(shots / "admin-hosts.png")

    # The run page: metrics with CIs and directions, primary first.
    assert page["metrics"][0][:3] == ["cer (primary)", "0.0412", "[0.0301, 0.0533]"]
    assert "lower is better" in page["metrics"][0][3]
    by_name = {r[0]: r for r in page["metrics"]}
    assert by_name["wer"][2] == "[0.0944, 0.1421]"
    assert "lower is better" in by_name["wer"][3]
    assert by_name["exact_match"][2] == "[0.4600, 0.6400]"
    assert "higher is better" in by_name["exact_match"][3]
    # Shards with state, attempt, host (linked to its host page), done/total and errors.
    assert page["shards"][0][:4] == ["0", "Succeeded", "1", GPU_HOST]
    assert "60 / 60" in page["shards"][0][5]
    assert page["shards"][1][:4] == ["1", "Succeeded", "2", "cpu-node-2"]
    assert page["shards"][1][6] == "1"
    assert page["shardHostLink"] == f"/admin/hosts/host/{live.pk}/change/"
    # The timeline: time, kind, stage, shard, host, message; data folded; a sync tick summarised.
    assert [e[1] for e in page["events"]] == ["queued", "started", "progress", "retried", "succeeded"]
    assert page["events"][3][2:5] == ["infer", "1", "cpu-node-2"]
    assert page["events"][3][5].startswith("Attempt 1 lost: the host restarted")
    assert "fetch: 40/120 files, 4.0 MB of 12.0 MB" in page["events"][2][5]
    # Links: report (served), samples, artifacts by name (served to the staff session).
    assert page["report"] == f"/api/v1/runs/{run.pk}/report/"
    assert report.startswith("200 text/html")
    assert page["samples"] == f"/admin/runs/run/{run.pk}/samples/"
    assert [a[0] for a in page["artifacts"]] == ["metrics", "per_sample", "report"]
    assert artifact == 200
    # Spec and params pretty-printed, folded.
    assert page["specOpen"] is False
    assert '"image": "hyperbench/ocr-tesseract:1"' in page["spec"]
    assert '\n  "psm": 6' in page["params"]
    assert "Stage attempt" in page["fields"]
    assert "120 / 120 samples" in page["fields"]
    assert "{" not in page["fields"]  # no raw JSON in the read-only fields

    # The host page: GPU memory and utilization bars, what runs there, the cache against its budget.
    assert len(host["gpus"]) == 2
    assert host["gpus"][0]["memory"] == "75%"
    assert host["gpus"][0]["util"] == "87%"
    assert "59.8 GiB / 79.6 GiB" in host["gpus"][0]["text"]
    assert host["gpus"][0]["memoryPx"] > 50
    assert host["gpus"][1]["memory"] == "1%"
    assert host["gpus"][1]["util"] == "0%"
    assert host["cache"] == "30%"
    assert "3.0 GiB of a 10.0 GiB budget" in host["cacheText"]
    assert host["runLink"] == f"/admin/runs/run/{run.pk}/change/"
    assert f"run {run.pk}" in host["running"][0]
    assert "infer" in host["running"][0]
    assert "9f1c2d3e4b5a" in host["fields"]
    assert f"host.{GPU_HOST}" in host["fields"]
    assert "file:///srv/datasets/" in host["fields"]
    assert "1 / 2" in host["fields"]
    assert "ago" in host["fields"]

    # The list: the silent host stands out (a red badge, a tinted row); the live one does not.
    rows = {r["text"].split("\t")[0].strip() or r["text"]: r for r in listing}
    silent_row = next(r for r in listing if "cpu-node-2" in r["text"])
    live_row = next(r for r in listing if GPU_HOST in r["text"])
    assert silent_row["silent"], rows
    assert "silent" in silent_row["text"], rows
    assert not live_row["silent"]
    assert "live" in live_row["text"]
    assert silent_row["bg"] != live_row["bg"]


def test_html_from_users_and_hosts_is_shown_as_text_never_run(
    admin_user: User, live_server: Any, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_ARTIFACTS_URI = (tmp_path / "artifacts").as_uri() + "/"
    run = _run(admin_user, tmp_path / "artifacts", model_name="m" + EVIL, message="lost " + EVIL)
    RunEvent.objects.create(run=run, kind="failed", stage="infer", host=EVIL, message=EVIL, data={"x": EVIL})
    RunShard.objects.create(run=run, index=2, host=EVIL, state="failed")
    Run.objects.filter(pk=run.pk).update(
        metrics={"metrics": {EVIL: {"value": 1.0, "ci95": [0.5, EVIL]}}, "primary_metric": EVIL, "n": EVIL},
        spec={"x": EVIL},
    )
    Host.objects.create(
        name="evil-host", last_seen=timezone.now(), nvml=True,
        gpus=[{"index": 0, "name": EVIL, "memory_total_mb": 100, "memory_used_mb": 50, "utilization_pct": 5}],
        cache=[{"name": EVIL, "version": EVIL, "bytes": 1, "last_used": time.time(), "in_use": False}],
        running=[{"run": run.pk, "shard": None, "stage": EVIL, "gpus": [EVIL], "started": EVIL}],
        dataset_roots=[EVIL],
    )  # fmt: skip

    with Browser(tmp_path / "profile") as b:
        b.login(live_server.url, "admin", "password")
        seen = {}
        for url in (f"/admin/runs/run/{run.pk}/change/", "/admin/hosts/host/", "/admin/runs/run/"):
            b.open(live_server.url + url)
            seen[url] = b.evaluate(PROBE)
        host = Host.objects.get(name="evil-host")
        b.open(f"{live_server.url}/admin/hosts/host/{host.pk}/change/")
        seen["host"] = b.evaluate(PROBE)

    for url, got in seen.items():
        assert got["pwned"] == 0, url
        assert got["imgs"] == 0, url
    assert "lost <script>window.hbPwned = 1</script>" in seen[f"/admin/runs/run/{run.pk}/change/"]["text"]
    assert "<script>window.hbPwned = 1</script>" in seen["host"]["text"]


@pytest.mark.parametrize(
    "metrics",
    [
        None,
        [],
        {"metrics": []},
        {"metrics": {"cer": None}},
        {"metrics": {"cer": {"value": "x", "ci95": [1]}}},
        {"metrics": {"cer": {"value": 0.1}}, "lower_is_better": "cer", "latency_ms": [1]},
    ],
)
def test_a_run_page_with_odd_or_missing_metrics_still_renders(
    admin_user: User, metrics: object, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_ARTIFACTS_URI = (tmp_path / "artifacts").as_uri() + "/"
    run = _run(admin_user, tmp_path / "artifacts")
    Run.objects.filter(pk=run.pk).update(metrics=metrics)
    client = Client()
    client.force_login(admin_user)

    page = client.get(f"/admin/runs/run/{run.pk}/change/")

    assert page.status_code == 200
    assert 'id="hb-shards"' in page.content.decode()


def test_a_host_that_reported_odd_values_still_renders(admin_user: User) -> None:
    host = Host.objects.create(
        name="odd", last_seen=timezone.now(), nvml=True,
        gpus=[{"index": 0}, "junk",
              {"index": 1, "memory_total_mb": 0, "memory_used_mb": 5, "utilization_pct": 250}],
        cache=["junk", {"bytes": "many"}], running=[None, {"run": "x"}], dataset_roots="not-a-list",
    )  # fmt: skip
    client = Client()
    client.force_login(admin_user)

    assert client.get("/admin/hosts/host/").status_code == 200
    page = client.get(f"/admin/hosts/host/{host.pk}/change/")
    assert page.status_code == 200
    assert 'id="hb-gpus"' in page.content.decode()
