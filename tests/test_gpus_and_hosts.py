"""GPU scheduling and host telemetry: the real path here (no NVML), fakes at the NVML seam only."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pynvml
import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.hosts.models import Host
from apps.runs.models import RunEvent
from hyperbench_web.devstack import Stack
from tests.conftest import IMAGE_VERSION, wait_for_run
from tests.test_gpus import FakeDevice, FakeNvmlDriver
from worker import gpus, stagekit
from worker.config import load
from worker.contract import ModelRef
from worker.gpus import GpuInfo


def _gpu(index: int, used_mb: int, total_mb: int = 81920) -> GpuInfo:
    return {
        "index": index,
        "uuid": f"GPU-{index:04d}",
        "name": "NVIDIA H100",
        "memory_total_mb": total_mb,
        "memory_used_mb": used_mb,
        "utilization_pct": 0,
        "temperature_c": 40,
    }


def _model(gpus: int) -> ModelRef:
    return {
        "name": "vlm",
        "image": "x",
        "digest": "sha256:" + "a" * 64,
        "requires_gpu": True,
        "gpus": gpus,
        "network": False,
    }


def test_a_gpu_model_gets_a_free_gpu_and_never_one_in_use(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HYPERBENCH_WORK_DIR", str(tmp_path))
    cfg = load()
    fleet = [_gpu(0, used_mb=40000), _gpu(1, used_mb=300), _gpu(2, used_mb=0)]

    first = stagekit.take_gpus(cfg, _model(1), reader=lambda: fleet)
    second = stagekit.take_gpus(cfg, _model(1), reader=lambda: fleet)

    assert first is not None
    assert second is not None
    assert {first.indices[0], second.indices[0]} == {1, 2}  # GPU 0 is busy with another process's memory
    with pytest.raises(stagekit.NoFreeGpu):
        stagekit.take_gpus(cfg, _model(1), reader=lambda: fleet)
    first.release()
    third = stagekit.take_gpus(cfg, _model(1), reader=lambda: fleet)
    assert third is not None
    assert third.indices == first.indices
    second.release()
    third.release()


def test_a_multi_gpu_model_waits_when_fewer_gpus_are_free(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HYPERBENCH_WORK_DIR", str(tmp_path))
    fleet = [_gpu(0, used_mb=0), _gpu(1, used_mb=70000)]
    with pytest.raises(stagekit.NoFreeGpu, match="needs 2 free GPU"):
        stagekit.take_gpus(load(), _model(2), reader=lambda: fleet)


def test_a_cpu_model_takes_no_gpu(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HYPERBENCH_WORK_DIR", str(tmp_path))
    cpu: ModelRef = {**_model(0), "requires_gpu": False}
    assert stagekit.take_gpus(load(), cpu, reader=lambda: [_gpu(0, 0)]) is None


def test_through_the_nvml_seam_a_shard_gets_a_working_idle_gpu_and_then_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The host task's own allocation path, default reader and all, over a fake pynvml driver."""
    monkeypatch.setenv("HYPERBENCH_WORK_DIR", str(tmp_path))
    busy = FakeDevice(uuid="GPU-busy", memory_used_mb=38_000)
    failing = FakeDevice(open_error=pynvml.NVMLError_GpuIsLost())
    FakeNvmlDriver([busy, failing, FakeDevice(uuid="GPU-idle")]).install(monkeypatch)
    gpus._reset_nvml_state()
    try:
        cfg = load()
        lease = stagekit.take_gpus(cfg, _model(1))
        assert lease is not None
        assert (lease.indices, lease.uuids) == ([2], ["GPU-idle"])
        with pytest.raises(stagekit.NoFreeGpu, match="needs 1 free GPU"):
            stagekit.take_gpus(cfg, _model(1))  # 0 is busy, 1 is failing, 2 is ours now
        lease.release()
        with pytest.raises(stagekit.NoFreeGpu, match="needs 2 free GPU"):
            stagekit.take_gpus(cfg, _model(2))  # never the failing one, never oversubscribed
    finally:
        gpus._reset_nvml_state()


@pytest.mark.docker
def test_the_host_worker_reports_itself_with_no_gpus_where_nvml_is_absent(
    platform: Stack, as_alice: APIClient
) -> None:
    # The suite's host worker, by name: a module that ran three hosts may have left the late
    # heartbeats of the two it stopped, which show as other (silent) hosts.
    name = platform.hostname("host")
    deadline = time.monotonic() + 20
    while not Host.objects.filter(name=name).exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    host = Host.objects.get(name=name)
    assert host.nvml is False
    assert host.gpus == []
    assert not host.silent
    listed = {h["name"]: h for h in as_alice.get("/api/v1/hosts/").json()["results"]}
    assert listed[name]["silent"] is False
    assert listed[name]["gpus"] == []


def test_a_host_that_stopped_reporting_is_shown_as_silent(db: None, as_alice: APIClient) -> None:
    old = timezone.now() - timedelta(minutes=10)
    Host.objects.create(name="gpu-07", last_seen=old, reported_at=old)
    Host.objects.create(name="gpu-08", last_seen=timezone.now())
    # Its clock runs ten minutes behind, but its report was stored just now: not silent.
    Host.objects.create(name="gpu-09", last_seen=old)
    listed = {h["name"]: h["silent"] for h in as_alice.get("/api/v1/hosts/").json()["results"]}
    assert listed == {"gpu-07": True, "gpu-08": False, "gpu-09": False}


@pytest.mark.docker
def test_a_gpu_model_on_a_host_without_gpus_waits_then_fails_and_never_runs(
    platform: Stack, as_staff: APIClient, as_alice: APIClient, sample_dataset: Path, images: dict[str, str]
) -> None:
    r = as_staff.post(
        "/api/v1/models/",
        {
            "name": "big-vlm",
            "image": f"hyperbench/testkit:{IMAGE_VERSION}",
            "digest": images["testkit"],
            "requires_gpu": True,
            "gpus": 1,
        },
        format="json",
    )
    assert r.status_code == 201
    ds = as_alice.post("/api/v1/datasets/", {"uri": sample_dataset.as_uri()}, format="json").json()
    exp = as_alice.post(
        "/api/v1/experiments/", {"name": "x", "model": "big-vlm", "dataset": ds["id"]}, format="json"
    ).json()
    run_id = as_alice.post("/api/v1/runs/", {"experiment": exp["id"]}, format="json").json()["id"]

    data = wait_for_run(as_alice, run_id, timeout_s=120)

    assert data["state"] == "failed"
    assert "No host had a free GPU" in data["error_reason"]
    kinds = list(RunEvent.objects.filter(run_id=run_id).values_list("kind", "message"))
    assert any(k == "log" and "waiting for a free GPU" in m for k, m in kinds)
    assert not any(k == "started" for k, _ in kinds)  # no container, no dataset work, nothing held
    assert data["shards"][0]["done"] == 0
