"""Sync progress as run events, and the node cache as hosts report it (real SeaweedFS, Redis, workers)."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from apps.catalog.models import Dataset, ModelImage
from apps.hosts.models import Host
from apps.hosts.services import host_report_record
from apps.runs.events import event_record
from apps.runs.models import Experiment, Run, RunEvent, RunShard
from hyperbench_web.devstack import Stack
from worker import contract, stagekit, telemetry
from worker.config import HostConfig, load
from worker.datasync import dataset_lease
from worker.nodecache import MARKER, CacheSettings, NodeCache, S3Settings

pytestmark = pytest.mark.timeout(300)
BUCKET = "hb-cachelist"


def _run(owner: Any, *, shard_state: str = RunShard.State.PENDING, host: str = "") -> Run:
    model = ModelImage.objects.create(name="m", image="hyperbench/testkit:x", digest="sha256:" + "a" * 64)
    dataset = Dataset.objects.create(
        name="scans",
        version="1",
        task="ocr",
        source_uri=f"s3://{BUCKET}/p/",
        manifest_sha256="b" * 64,
        sample_count=8,
    )
    exp = Experiment.objects.create(name="e", model=model, dataset=dataset, owner=owner)
    # Queued, its shard pending: the reconciler of the test's control worker leaves it alone.
    run = Run.objects.create(experiment=exp, spec={}, manifest_sha256="b" * 64, progress_total=8)
    RunShard.objects.create(run=run, index=0, state=shard_state, host=host)
    return run


def _cache(root: Path, server: SeaweedS3) -> NodeCache:
    return NodeCache(
        CacheSettings(root=root, budget_bytes=10**9, lock_timeout_s=60),
        S3Settings(
            endpoint_url=server.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            buckets=(BUCKET,),
        ),
    )


def _superuser_client() -> Client:
    user = get_user_model().objects.create_superuser("ops", "ops@example.org", "pw-ops-admin")
    client = Client()
    client.force_login(user)
    return client


# --- sync progress -> run events ---------------------------------------------------------------


@pytest.mark.docker
def test_sync_progress_reaches_the_run_api_and_admin_through_the_control_worker(
    platform: Stack,
    redis_url: str,
    s3_server: SeaweedS3,
    alice: Any,
    as_alice: APIClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from worker.celery_app import app as host_app

    # The host side's Celery app sends to the suite's Redis, where the real control worker listens.
    monkeypatch.setattr(host_app.conf, "broker_url", redis_url)
    monkeypatch.setattr(host_app, "_pool", None)
    run = _run(alice)
    ref = make_dataset(s3_server.client(), BUCKET, "events/v1/", count=8, size=4000, name="scans")

    result = _cache(tmp_path / "cache", s3_server).sync(ref, on_progress=stagekit.sync_progress(run.pk, 0))
    assert result.fetched_files == 8

    deadline = time.monotonic() + 30
    sync: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        body = as_alice.get(f"/api/v1/runs/{run.pk}/").json()
        sync = body["sync"]
        if sync and sync[0]["phase"] == "done":
            break
        time.sleep(0.3)
    assert sync, body
    assert sync[0]["phase"] == "done", body
    tick = sync[0]
    assert tick["shard"] == 0
    assert tick["host"] == load().hostname
    assert (tick["files_done"], tick["files_total"]) == (8, 8)
    assert tick["bytes_done"] == tick["bytes_total"] == 8 * 4000
    assert tick["fetched_files"] == 8
    assert tick["fetched_bytes"] == 8 * 4000
    assert tick["rate_bps"] > 0
    assert "8/8 files" in tick["message"]
    events = [e for e in body["events"] if e["stage"] == "sync"]
    assert len(events) == 1
    assert events[0]["kind"] == "progress"
    assert events[0]["data"]["files_done"] == 8
    assert RunEvent.objects.filter(run=run, stage="sync").count() == 1  # ticks coalesce into one row

    page = _superuser_client().get(f"/admin/runs/run/{run.pk}/change/")
    assert page.status_code == 200
    assert b"done: 8/8 files, 32.0 kB of 32.0 kB, fetched 8 files (32.0 kB)" in page.content


def _tick(
    run: Run, ts: float, files_done: int, *, shard: int | None = 0, host: str = "gpu-1"
) -> contract.Event:
    return {
        "run_id": run.pk,
        "kind": "progress",
        "stage": "sync",
        "host": host,
        "ts": ts,
        "message": f"dataset sync: {files_done}/10 files, 1.0 MB/s",
        "data": {
            "shard": shard,
            "phase": "done" if files_done == 10 else "download",
            "files_done": files_done,
            "files_total": 10,
            "bytes_done": files_done * 100,
            "bytes_total": 1000,
            "fetched_files": files_done,
            "fetched_bytes": files_done * 100,
            "rate_bps": 1_000_000,
        },
    }


def test_a_late_sync_tick_never_overwrites_a_newer_one_and_a_tick_keeps_its_shard_alive(
    db: None, alice: Any, as_alice: APIClient
) -> None:
    run = _run(alice, shard_state=RunShard.State.RUNNING, host="gpu-1")
    RunShard.objects.filter(run=run).update(updated_at=timezone.now() - timedelta(minutes=10))
    now = time.time()

    event_record(event=_tick(run, now, 4))
    event_record(event=_tick(run, now + 2, 10))
    event_record(event=_tick(run, now + 1, 7))  # arrives late
    event_record(event=_tick(run, now + 2, 10))  # delivered twice
    event_record(event=_tick(run, now, 3, shard=None))  # the evaluate step's own sync

    sync = as_alice.get(f"/api/v1/runs/{run.pk}/").json()["sync"]
    by_shard = {s["shard"]: s for s in sync}
    assert set(by_shard) == {0, None}
    assert by_shard[0]["files_done"] == 10
    assert by_shard[0]["phase"] == "done"
    assert by_shard[None]["files_done"] == 3
    assert RunEvent.objects.filter(run=run, stage="sync").count() == 2
    shard = RunShard.objects.get(run=run)
    assert timezone.now() - shard.updated_at < timedelta(minutes=1)
    assert shard.done == 0  # sync counts files, not the shard's samples


# --- the node cache as the host reports it ------------------------------------------------------


@pytest.fixture
def host_cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedS3) -> HostConfig:
    env = {
        "HYPERBENCH_VAR_DIR": str(tmp_path / "var"),
        "HYPERBENCH_CACHE_DIR": str(tmp_path / "cache"),
        "HYPERBENCH_CACHE_BUDGET_BYTES": str(50 * 2**20),
        "HYPERBENCH_HOSTNAME": "cache-lister-01",
        "HYPERBENCH_S3_ENDPOINT_URL": s3_server.endpoint,
        "HYPERBENCH_S3_REGION": REGION,
        "HYPERBENCH_S3_BUCKETS": BUCKET,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load()


def test_a_host_reports_its_cached_versions_with_last_use_and_leases_and_the_api_shows_them(
    host_cfg: HostConfig, s3_server: SeaweedS3, as_alice: APIClient, db: None
) -> None:
    old = make_dataset(s3_server.client(), BUCKET, "old/v1/", count=3, size=1000, name="receipts")
    new = make_dataset(s3_server.client(), BUCKET, "new/v1/", count=5, size=2000, name="invoices")
    cache = NodeCache.from_config(host_cfg)
    old_dir = cache.sync(old).path
    lease_file = host_cfg.cache_dir / "locks" / "receipts" / f"{old['manifest_sha256']}.lease"
    an_hour_ago = time.time() - 3600
    os.utime(lease_file, (an_hour_ago, an_hour_ago))

    with dataset_lease(new, host_cfg) as new_dir:  # the worker's own lease, as a running container holds it
        report = telemetry.collect(host_cfg, "host@cache-lister-01")
        host_report_record(report=report)
    after = telemetry.collect(host_cfg, "host@cache-lister-01")

    assert report["cache_budget_bytes"] == 50 * 2**20
    listed = {c["name"]: c for c in report["cache"]}
    assert set(listed) == {"receipts", "invoices"}
    inv, rec = listed["invoices"], listed["receipts"]
    assert (inv["version"], inv["manifest_sha256"], inv["in_use"]) == ("1", new["manifest_sha256"], True)
    assert (rec["version"], rec["manifest_sha256"], rec["in_use"]) == ("1", old["manifest_sha256"], False)
    assert rec["last_used"] == pytest.approx(an_hour_ago, abs=1)
    assert time.time() - inv["last_used"] < 60
    on_disk = sum(p.stat().st_size for p in new_dir.rglob("*") if p.is_file() and p.name != MARKER)
    assert inv["bytes"] == on_disk
    assert rec["bytes"] > 3 * 1000
    assert report["cache_bytes"] == inv["bytes"] + rec["bytes"]
    assert [c["name"] for c in report["cache"]] == ["invoices", "receipts"]  # most recently used first
    assert {c["name"]: c["in_use"] for c in after["cache"]} == {"invoices": False, "receipts": False}
    assert old_dir.is_dir()

    host = as_alice.get("/api/v1/hosts/cache-lister-01/").json()
    assert host["cache_budget_bytes"] == 50 * 2**20
    assert host["cache_bytes"] == report["cache_bytes"]
    shown = {c["name"]: c for c in host["cache"]}
    assert shown["invoices"]["in_use"] is True
    assert shown["invoices"]["version"] == "1"
    assert shown["receipts"]["last_used_at"].startswith(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(an_hour_ago))
    )

    pk = Host.objects.get(name="cache-lister-01").pk
    page = _superuser_client().get(f"/admin/hosts/host/{pk}/change/")
    assert page.status_code == 200
    html = page.content.decode().replace("\xa0", " ")
    assert "<th>last used</th>" in html
    assert "in use" in html
    assert "(1 hour ago)" in html


def test_a_host_reports_an_empty_cache_and_its_budget_before_anything_was_synced(
    host_cfg: HostConfig,
) -> None:
    report = telemetry.collect(host_cfg, "host@cache-lister-01")
    assert report["cache"] == []
    assert report["cache_bytes"] == 0
    assert report["cache_budget_bytes"] == 50 * 2**20
    assert report["nvml"] is False  # no NVML on this machine
    assert report["gpus"] == []


def test_nvml_that_answers_with_zero_gpus_is_reported_as_present(
    host_cfg: HostConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The NVML seam only: a driver that initialises and counts no devices.
    class ZeroGpuNvml:
        NVMLError = RuntimeError

        @staticmethod
        def nvmlDeviceGetCount() -> int:
            return 0

    monkeypatch.setattr("worker.gpus._nvml", lambda: ZeroGpuNvml)
    report = telemetry.collect(host_cfg, "host@cache-lister-01")
    assert report["nvml"] is True
    assert report["gpus"] == []
