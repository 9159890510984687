"""worker.gpus: NVML telemetry and GPU allocation.

The real code path runs here with NVML absent (no driver on these machines); the
GPU scenarios run against a fake NVML at one seam, the ``pynvml`` module object;
the allocator's bookkeeping is also unit-tested against plain GpuInfo readers.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from worker import gpus
from worker.gpus import GpuAllocator, GpuInfo, GpuLease, list_gpus

MIB = 1024 * 1024


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


# --------------------------------------------------------------------------- fake NVML at the one seam
#
# gpustat-style scenarios (gpustat's test_gpustat.py mocks pynvml's functions the
# same way): the real ``pynvml`` module object, the only thing worker/gpus.py talks
# to, gets fake device functions; its error classes stay the real ones, so
# ``NVMLError_NotSupported`` and friends behave (and print) as on a GPU host.
# Everything above the seam, NVML initialisation included, is the production code.


@dataclass
class FakeDevice:
    """One GPU as the fake driver shows it. An exception instance as a value: that call raises it."""

    uuid: object = "GPU-00000000-1111-2222-3333-444444444444"
    name: object = "NVIDIA A100-SXM4-40GB"
    memory_total_mb: int = 40_960
    memory_used_mb: int = 512
    memory_error: BaseException | None = None
    utilization: object = 37
    temperature: object = 41
    open_error: BaseException | None = None  # nvmlDeviceGetHandleByIndex raises this


class FakeNvmlDriver:
    """The device functions of pynvml over a list of FakeDevice; counts every call for the tests."""

    def __init__(self, devices: list[FakeDevice], init_error: BaseException | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.calls: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def _device(self, handle: Any) -> FakeDevice:
        assert isinstance(handle, FakeDevice), "worker.gpus passed something that is not a handle"
        return handle

    @staticmethod
    def _value(value: object) -> Any:
        if isinstance(value, BaseException):
            raise value
        return value

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def init() -> None:
            self._count("nvmlInit")
            if self.init_error is not None:
                raise self.init_error

        def count() -> int:
            self._count("nvmlDeviceGetCount")
            return len(self.devices)

        def handle(index: int) -> FakeDevice:
            self._count("nvmlDeviceGetHandleByIndex")
            if not 0 <= index < len(self.devices):
                raise pynvml.NVMLError_InvalidArgument()
            dev = self.devices[index]
            if dev.open_error is not None:
                raise dev.open_error
            return dev

        def memory(h: Any) -> Any:
            dev = self._device(h)
            if dev.memory_error is not None:
                raise dev.memory_error
            return SimpleNamespace(
                total=dev.memory_total_mb * MIB,
                used=dev.memory_used_mb * MIB,
                free=(dev.memory_total_mb - dev.memory_used_mb) * MIB,
            )

        def utilization(h: Any) -> Any:
            return SimpleNamespace(gpu=self._value(self._device(h).utilization), memory=0)

        def temperature(h: Any, sensor: int) -> Any:
            assert sensor == pynvml.NVML_TEMPERATURE_GPU
            return self._value(self._device(h).temperature)

        for name, fn in {
            "nvmlInit": init,
            "nvmlShutdown": lambda: None,
            "nvmlDeviceGetCount": count,
            "nvmlDeviceGetHandleByIndex": handle,
            "nvmlDeviceGetMemoryInfo": memory,
            "nvmlDeviceGetUtilizationRates": utilization,
            "nvmlDeviceGetTemperature": temperature,
            "nvmlDeviceGetUUID": lambda h: self._value(self._device(h).uuid),
            "nvmlDeviceGetName": lambda h: self._value(self._device(h).name),
        }.items():
            monkeypatch.setattr(pynvml, name, fn)


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeNvmlDriver]]:
    """Install a scenario on the pynvml module; NVML state is reset before and after."""

    def install(devices: list[FakeDevice], init_error: BaseException | None = None) -> FakeNvmlDriver:
        driver = FakeNvmlDriver(devices, init_error)
        driver.install(monkeypatch)
        gpus._reset_nvml_state()
        return driver

    yield install
    gpus._reset_nvml_state()  # the next test sees the real (absent) NVML again


def basic() -> list[FakeDevice]:
    """gpustat's "basic" scenario, two GPUs: 0 is idle, 1 is busy with someone else's 30 GB."""
    return [
        FakeDevice(),
        FakeDevice(
            uuid=b"GPU-11111111-1111-2222-3333-444444444444",  # older pynvml returns bytes
            name=b"NVIDIA A100-SXM4-40GB",
            memory_used_mb=30_000,
            utilization=99,
            temperature=78,
        ),
    ]


def test_basic_two_gpus_are_read_with_every_metric(fake_nvml: Callable[..., FakeNvmlDriver]) -> None:
    driver = fake_nvml(basic())

    found = list_gpus()
    list_gpus()

    assert found == [
        {
            "index": 0,
            "uuid": "GPU-00000000-1111-2222-3333-444444444444",
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_mb": 40_960,
            "memory_used_mb": 512,
            "utilization_pct": 37,
            "temperature_c": 41,
        },
        {
            "index": 1,
            "uuid": "GPU-11111111-1111-2222-3333-444444444444",
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_mb": 40_960,
            "memory_used_mb": 30_000,
            "utilization_pct": 99,
            "temperature_c": 78,
        },
    ]
    assert driver.calls["nvmlInit"] == 1  # once per process, not once per read


def test_basic_the_allocator_takes_the_idle_gpu_and_never_the_busy_one(
    fake_nvml: Callable[..., FakeNvmlDriver], tmp_path: Path
) -> None:
    fake_nvml(basic())
    allocator = GpuAllocator(tmp_path)  # the default reader: list_gpus over the fake driver

    lease = allocator.acquire(1)
    assert lease is not None
    assert (lease.indices, lease.uuids) == ([0], ["GPU-00000000-1111-2222-3333-444444444444"])
    assert allocator.acquire(1) is None  # GPU 1 has 73 % of its memory in use
    assert allocator.acquire(2) is None
    lease.release()
    with allocator.acquire(2, max_memory_used_fraction=0.9) as both:  # type: ignore[union-attr]
        assert both.indices == [0, 1]


def one_gpu_failing() -> list[FakeDevice]:
    """GPU 1 cannot be opened (fallen off the bus); 0 and 2 work."""
    gpu2 = FakeDevice(uuid="GPU-22222222-1111-2222-3333-444444444444")
    return [FakeDevice(), FakeDevice(open_error=pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)), gpu2]


def test_one_gpu_failing_is_left_out_and_the_others_are_reported(
    fake_nvml: Callable[..., FakeNvmlDriver], caplog: pytest.LogCaptureFixture
) -> None:
    fake_nvml(one_gpu_failing())

    with caplog.at_level(logging.WARNING, logger="worker.gpus"):
        found = list_gpus()
        again = list_gpus()

    assert [g["index"] for g in found] == [0, 2]  # NVML's indices: the device ids Docker takes
    assert again == found
    said = [r.getMessage() for r in caplog.records if "GPU 1 is left out" in r.getMessage()]
    assert len(said) == 1  # a heartbeat every 30 s does not repeat it


def test_a_gpu_reported_lost_while_reading_a_metric_is_left_out(
    fake_nvml: Callable[..., FakeNvmlDriver],
) -> None:
    fake_nvml([FakeDevice(memory_error=pynvml.NVMLError_GpuIsLost()), FakeDevice(uuid="GPU-b")])

    assert [g["uuid"] for g in list_gpus()] == ["GPU-b"]


def test_one_gpu_failing_the_allocator_serves_the_working_ones_and_never_the_failing_one(
    fake_nvml: Callable[..., FakeNvmlDriver], tmp_path: Path
) -> None:
    fake_nvml(one_gpu_failing())
    allocator = GpuAllocator(tmp_path)

    with allocator.acquire(2) as lease:  # type: ignore[union-attr]
        assert lease.indices == [0, 2]
    assert allocator.acquire(3) is None  # the host has two usable GPUs, not three
    assert not (tmp_path / "gpu-1.lock").exists()


def test_the_telemetry_report_carries_the_working_gpus_only(
    fake_nvml: Callable[..., FakeNvmlDriver], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import telemetry
    from worker.config import load

    monkeypatch.setenv("HYPERBENCH_VAR_DIR", str(tmp_path))
    monkeypatch.setattr(telemetry, "running_containers", lambda *a, **k: [])  # no Docker in this unit test
    fake_nvml(one_gpu_failing())

    report = telemetry.collect(load(), "host@test")

    assert [g["index"] for g in report["gpus"]] == [0, 2]


def metric_unsupported() -> list[FakeDevice]:
    """Consumer or old boards: utilization and temperature are NotSupported; 1 has no memory info either."""
    unsupported = pynvml.NVMLError_NotSupported
    return [
        FakeDevice(utilization=unsupported(), temperature=unsupported()),
        FakeDevice(
            uuid=unsupported(),
            name=unsupported(),
            memory_error=unsupported(),
            utilization=unsupported(),
            temperature=unsupported(),
        ),
    ]


def test_an_unsupported_metric_is_none_and_the_rest_is_read(fake_nvml: Callable[..., FakeNvmlDriver]) -> None:
    fake_nvml(metric_unsupported())

    first, second = list_gpus()

    assert (first["utilization_pct"], first["temperature_c"]) == (None, None)
    assert (first["memory_used_mb"], first["memory_total_mb"], first["uuid"]) == (
        512,
        40_960,
        "GPU-00000000-1111-2222-3333-444444444444",
    )
    assert second == {
        "index": 1,
        "uuid": None,
        "name": None,
        "memory_total_mb": None,
        "memory_used_mb": None,
        "utilization_pct": None,
        "temperature_c": None,
    }


def test_metric_unsupported_the_allocator_still_allocates_and_uses_the_index_for_a_missing_uuid(
    fake_nvml: Callable[..., FakeNvmlDriver], tmp_path: Path
) -> None:
    fake_nvml(metric_unsupported())
    allocator = GpuAllocator(tmp_path)

    with allocator.acquire(2) as lease:  # type: ignore[union-attr]
        assert lease.indices == [0, 1]
        assert lease.uuids == ["GPU-00000000-1111-2222-3333-444444444444", "1"]
        assert allocator.acquire(1) is None  # no memory metric, but the lock still keeps it exclusive


def test_a_driver_that_fails_to_initialise_is_a_host_with_no_gpus(
    fake_nvml: Callable[..., FakeNvmlDriver], tmp_path: Path
) -> None:
    driver = fake_nvml(basic(), init_error=pynvml.NVMLError_DriverNotLoaded())

    assert list_gpus() == []
    assert list_gpus() == []
    assert driver.calls == {"nvmlInit": 1}  # tried once, never asked for devices
    assert GpuAllocator(tmp_path).acquire(1) is None


# --------------------------------------------------------------------------- allocation


def test_it_takes_the_lowest_idle_gpus(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0), gpu(1)))
    lease = allocator.acquire(1)
    assert lease is not None
    assert lease.indices == [0]
    assert lease.uuids == ["GPU-00000000-aaaa-bbbb-cccc-000000000000"]
    second = allocator.acquire(1)
    assert second is not None
    assert second.indices == [1]
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
    assert lease is not None
    assert lease.indices == [1]
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
    assert lease is not None
    assert lease.indices == [0]


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
    with pytest.raises(ValueError, match="cannot acquire -1 GPUs"):
        GpuAllocator(tmp_path, reader_of(gpu(0))).acquire(-1)


def test_release_is_idempotent(tmp_path: Path) -> None:
    allocator = GpuAllocator(tmp_path, reader_of(gpu(0)))
    lease = allocator.acquire(1)
    assert lease is not None
    assert lease.held
    lease.release()
    lease.release()
    assert not lease.held
    assert allocator.acquire(1) is not None


def test_allocators_sharing_a_lock_dir_never_share_a_gpu(tmp_path: Path) -> None:
    devices = reader_of(gpu(0), gpu(1), gpu(2))
    first, second = GpuAllocator(tmp_path, devices), GpuAllocator(tmp_path, devices)
    a, b = first.acquire(2), second.acquire(2)
    assert a is not None
    assert a.indices == [0, 1]
    assert b is None
    c = second.acquire(1)
    assert c is not None
    assert c.indices == [2]


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
