"""worker.gpus: NVML telemetry where NVML is absent, and GPU allocation against fake readers."""

from __future__ import annotations

import logging
import multiprocessing
import queue
from pathlib import Path
from typing import Any

import pytest

from worker import gpus
from worker.gpus import GpuAllocator, GpuInfo, GpuLease, list_gpus


def gpu(index: int, used_mb: int | None = 10, total_mb: int | None = 16_000, **extra: Any) -> GpuInfo:
    info = GpuInfo(
        index=index,
        uuid=f"GPU-{index:08d}-aaaa-bbbb-cccc-000000000000",
        name="NVIDIA Fake 16GB",
        memory_total_mb=total_mb,
        memory_used_mb=used_mb,
        utilization_pct=0,
        temperature_c=35,
    )
    info.update(extra)  # type: ignore[typeddict-item]
    return info


def reader_of(*devices: GpuInfo) -> Any:
    return lambda: list(devices)


# --------------------------------------------------------------------------- NVML absent (this machine)


def nvml_is_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - any failure means no NVML here
        return False
    pynvml.nvmlShutdown()
    return True


needs_no_nvml = pytest.mark.skipif(nvml_is_present(), reason="this host has NVML (a GPU driver)")


@needs_no_nvml
def test_list_gpus_returns_nothing_where_nvml_is_absent(caplog: pytest.LogCaptureFixture) -> None:
    gpus._reset_nvml_state()
    with caplog.at_level(logging.INFO, logger="worker.gpus"):
        assert list_gpus() == []
        assert list_gpus() == []
    said = [record for record in caplog.records if "NVML unavailable" in record.getMessage()]
    assert len(said) == 1  # logged once per process, not on every call
    assert said[0].levelno == logging.INFO


@needs_no_nvml
def test_the_default_allocator_gives_no_gpu_where_nvml_is_absent(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path / "locks")
    assert allocator.acquire(1) is None
    with allocator.acquire(0) as lease:  # type: ignore[union-attr]
        assert lease.indices == []


class _FakeNVMLError(Exception):
    pass


class _FakeNvml:
    """Just enough of pynvml: GPU 0 reports everything, GPU 1 supports no metric."""

    NVMLError = _FakeNVMLError
    NVML_TEMPERATURE_GPU = 0

    class _Memory:
        total = 16 * 1024**3
        used = 512 * 1024**2

    class _Utilization:
        gpu = 37

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802 - pynvml's names
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def _only_first(self, handle: int, value: object) -> Any:
        if handle != 0:
            raise _FakeNVMLError("Not Supported")
        return value

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:  # noqa: N802
        return self._only_first(handle, self._Memory())

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:  # noqa: N802
        return self._only_first(handle, self._Utilization())

    def nvmlDeviceGetUUID(self, handle: int) -> Any:  # noqa: N802
        return self._only_first(handle, b"GPU-0000")  # older pynvml returns bytes

    def nvmlDeviceGetName(self, handle: int) -> Any:  # noqa: N802
        return self._only_first(handle, "NVIDIA A100-SXM4-40GB")

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> Any:  # noqa: N802
        return self._only_first(handle, 41)


def test_list_gpus_maps_nvml_metrics_and_leaves_unsupported_ones_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(gpus, "_nvml", lambda: _FakeNvml())
    assert list_gpus() == [
        {
            "index": 0,
            "uuid": "GPU-0000",
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_mb": 16384,
            "memory_used_mb": 512,
            "utilization_pct": 37,
            "temperature_c": 41,
        },
        {
            "index": 1,
            "uuid": None,
            "name": None,
            "memory_total_mb": None,
            "memory_used_mb": None,
            "utilization_pct": None,
            "temperature_c": None,
        },
    ]


# --------------------------------------------------------------------------- allocation


def test_it_takes_the_lowest_idle_gpus(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0), gpu(1)))
    lease = allocator.acquire(1)
    assert lease is not None
    assert lease.indices == [0]
    assert lease.uuids == ["GPU-00000000-aaaa-bbbb-cccc-000000000000"]
    second = allocator.acquire(1)
    assert second is not None and second.indices == [1]
    assert allocator.acquire(1) is None  # both held now
    lease.release()
    second.release()


def test_two_idle_gpus_can_be_taken_together(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(1), gpu(0)))
    with allocator.acquire(2) as lease:  # type: ignore[union-attr]
        assert lease.indices == [0, 1]
        assert allocator.acquire(1) is None
    assert allocator.acquire(2) is not None  # released at the end of the with block


def test_it_skips_a_gpu_whose_memory_is_in_use(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0, used_mb=9_000), gpu(1, used_mb=300)))
    lease = allocator.acquire(1)
    assert lease is not None and lease.indices == [1]
    assert allocator.acquire(1) is None
    assert allocator.acquire(1, max_memory_used_fraction=0.9) is not None  # a looser threshold


def test_a_gpu_without_memory_metrics_counts_as_free(tmp_path: Path) -> None:
    no_metrics = gpu(0, used_mb=None, total_mb=None, utilization_pct=None, temperature_c=None, uuid=None)
    allocator = GpuAllocator(tmp_path, reader_of(no_metrics))
    lease = allocator.acquire(1)
    assert lease is not None
    assert lease.indices == [0]
    assert lease.uuids == ["0"]  # the index stands in for a missing uuid
    assert allocator.acquire(1) is None  # the lock still keeps it exclusive


def test_it_takes_nothing_when_fewer_gpus_than_asked_are_free(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0), gpu(1, used_mb=15_000)))
    assert allocator.acquire(2) is None
    # Nothing stays held after a failed attempt: the one free GPU is still free.
    lease = allocator.acquire(1)
    assert lease is not None and lease.indices == [0]


def test_it_takes_nothing_when_the_host_has_fewer_gpus_than_asked(tmp_path: Path) -> None:
    assert GpuAllocator(tmp_path, reader_of(gpu(0))).acquire(2) is None
    assert GpuAllocator(tmp_path, reader_of()).acquire(1) is None


def test_zero_gpus_is_an_empty_lease_without_reading_nvml(tmp_path: Path) -> None:
    def reader() -> list[GpuInfo]:
        raise AssertionError("n=0 must not read the GPUs")

    lease = GpuAllocator(tmp_path, reader).acquire(0)
    assert isinstance(lease, GpuLease)
    assert (lease.indices, lease.uuids, lease.held) == ([], [], False)


def test_a_negative_count_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        GpuAllocator(tmp_path, reader_of(gpu(0))).acquire(-1)


def test_release_is_idempotent(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0)))
    lease = allocator.acquire(1)
    assert lease is not None and lease.held
    lease.release()
    lease.release()
    assert not lease.held
    assert allocator.acquire(1) is not None


def test_allocators_sharing_a_lock_dir_never_share_a_gpu(tmp_path: Path) -> None:
    devices = reader_of(gpu(0), gpu(1), gpu(2))
    first, second = GpuAllocator(tmp_path, devices), GpuAllocator(tmp_path, devices)
    a, b = first.acquire(2), second.acquire(2)
    assert a is not None and a.indices == [0, 1]
    assert b is None
    c = second.acquire(1)
    assert c is not None and c.indices == [2]


# --------------------------------------------------------------------------- across processes


def _hold_one_gpu(lock_dir: str, start: Any, done: Any, results: Any) -> None:
    allocator = GpuAllocator(lock_dir, reader_of(gpu(0), gpu(1)))
    start.wait(timeout=30)
    lease = allocator.acquire(1)
    results.put(None if lease is None else lease.indices[0])
    done.wait(timeout=30)  # hold the GPU until every process has tried
    if lease is not None:
        lease.release()


def test_worker_processes_on_one_host_never_take_the_same_gpu(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    processes = 4
    start, done, results = ctx.Barrier(processes), ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(target=_hold_one_gpu, args=(str(tmp_path), start, done, results))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    got: list[int | None] = []
    try:
        for _ in range(processes):
            got.append(results.get(timeout=30))
    except queue.Empty:
        pytest.fail(f"only {len(got)} of {processes} processes answered")
    finally:
        done.set()
        for worker in workers:
            worker.join(timeout=30)
    taken = sorted(index for index in got if index is not None)
    assert taken == [0, 1]  # each GPU went to exactly one process
    assert got.count(None) == processes - 2
    assert all(worker.exitcode == 0 for worker in workers)
