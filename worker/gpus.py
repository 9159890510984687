"""GPU telemetry (NVML) and host-local GPU allocation.

``list_gpus()`` reads the host's GPUs through NVML (module ``pynvml`` from the
``nvidia-ml-py`` package). NVML is initialised lazily, once per process (again
after a fork), under a lock. Where NVML is absent (no library, no driver, a CPU
host) it returns ``[]`` and says so once in the log: CPU models still run. A GPU
NVML cannot open (or reports lost) is left out, with a warning, and the others are
still served; a metric the device does not support is None (as gpustat does).

The ``pynvml`` module object is the one seam to NVML: every call goes through it,
so tests replace its functions (tests/test_gpus.py scenarios) and nothing else.

``GpuAllocator`` hands out GPUs to shards. Several worker processes on one host
share a directory of lock files, one per GPU index, so two processes never take
the same GPU; a GPU whose memory is already in use by someone else (above a
threshold) is not taken either.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, TypeVar

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_MIB = 1024 * 1024


class GpuInfo(TypedDict):
    """One GPU as NVML sees it. A metric NVML cannot give is None."""

    index: int
    uuid: str | None
    name: str | None
    memory_total_mb: int | None
    memory_used_mb: int | None
    utilization_pct: int | None
    temperature_c: int | None


# NVML state of this process: None = not tried yet, True = usable, False = absent.
_nvml_lock = threading.Lock()
_nvml_ready: bool | None = None
_nvml_pid: int | None = None
_pynvml: Any = None
# GPUs already reported as failing (index, reason): a heartbeat every 30 s must not flood the log.
_failing_said: set[tuple[int, str]] = set()


def _nvml() -> Any:
    """Return the initialised ``pynvml`` module, or None where NVML is absent."""
    global _nvml_ready, _nvml_pid, _pynvml
    with _nvml_lock:
        if _nvml_ready is not None and _nvml_pid == os.getpid():
            return _pynvml if _nvml_ready else None
        _nvml_pid = os.getpid()
        try:
            import pynvml
        except ImportError:
            _nvml_ready = False
            log.info("NVML unavailable (the nvidia-ml-py package is not installed): no GPUs on this host")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            _nvml_ready = False
            log.info("NVML unavailable (%s): no GPUs on this host", _describe(exc))
            return None
        except OSError as exc:  # a broken libnvidia-ml that fails to load in an unexpected way
            _nvml_ready = False
            log.info("NVML unavailable (%s): no GPUs on this host", exc)
            return None
        _pynvml = pynvml
        _nvml_ready = True
        return pynvml


def nvml_available() -> bool:
    """Whether NVML started in this process (a host may still have zero GPUs)."""
    return _nvml() is not None


def _reset_nvml_state() -> None:
    """Forget the NVML state so the next call initialises again (for tests)."""
    global _nvml_ready, _nvml_pid, _pynvml
    with _nvml_lock:
        _nvml_ready = None
        _nvml_pid = None
        _pynvml = None
        _failing_said.clear()


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # noqa: BLE001 - pynvml's __str__ calls into the library, which may be absent
        return type(exc).__name__


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class _GpuFailing(Exception):
    """NVML says the device itself is gone: the GPU is left out, not shown with empty metrics."""


def _say_failing(index: int, reason: str) -> None:
    key = (index, reason)
    if key in _failing_said:
        log.debug("GPU %d still failing: %s", index, reason)
        return
    _failing_said.add(key)
    log.warning("GPU %d is left out (NVML: %s); the host's other GPUs are still served", index, reason)


def _read_gpu(nvml: Any, index: int) -> GpuInfo:
    """One GPU's entry; raises _GpuFailing when NVML cannot open it or reports it lost."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except nvml.NVMLError as exc:
        raise _GpuFailing(_describe(exc)) from exc
    lost = getattr(nvml, "NVMLError_GpuIsLost", None)

    def metric(read: Callable[[], _T]) -> _T | None:
        try:
            return read()
        except nvml.NVMLError as exc:
            if lost is not None and isinstance(exc, lost):
                raise _GpuFailing(_describe(exc)) from exc
            return None  # NotSupported (and any other per-metric error): that metric is unknown

    memory = metric(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
    utilization = metric(lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    uuid = metric(lambda: nvml.nvmlDeviceGetUUID(handle))
    name = metric(lambda: nvml.nvmlDeviceGetName(handle))
    temperature = metric(lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
    return GpuInfo(
        index=index,
        uuid=_text(uuid) if uuid is not None else None,
        name=_text(name) if name is not None else None,
        memory_total_mb=int(memory.total) // _MIB if memory is not None else None,
        memory_used_mb=int(memory.used) // _MIB if memory is not None else None,
        utilization_pct=int(utilization.gpu) if utilization is not None else None,
        temperature_c=int(temperature) if temperature is not None else None,
    )


def list_gpus() -> list[GpuInfo]:
    """Read the host's usable GPUs through NVML.

    Returns:
        One entry per working GPU, in NVML index order (indices stay NVML's, so a
        failing GPU 1 leaves 0 and 2); ``[]`` when NVML is absent or cannot count
        the devices. A GPU NVML cannot open or reports lost is left out (logged
        once). A metric the device does not support (or any other NVML error
        while reading it) is None; it never raises for one GPU or one metric.
    """
    nvml = _nvml()
    if nvml is None:
        return []
    try:
        count = int(nvml.nvmlDeviceGetCount())
    except nvml.NVMLError as exc:
        log.warning("NVML cannot count the GPUs: %s", _describe(exc))
        return []
    gpus: list[GpuInfo] = []
    for index in range(count):
        try:
            gpus.append(_read_gpu(nvml, index))
        except _GpuFailing as exc:
            _say_failing(index, str(exc))
    return gpus


def memory_used_fraction(gpu: GpuInfo) -> float | None:
    """Return the fraction of the GPU's memory in use, or None if NVML did not say."""
    total, used = gpu["memory_total_mb"], gpu["memory_used_mb"]
    if total is None or used is None or total <= 0:
        return None
    return used / total


class GpuLease:
    """GPUs held by one holder until :meth:`release` (or the end of a ``with`` block).

    Attributes:
        indices: The NVML indices of the GPUs held, ascending.
        uuids: Their UUIDs (the index as a string where NVML gave no UUID):
            what a Docker device request or ``NVIDIA_VISIBLE_DEVICES`` takes.
    """

    def __init__(self, gpus: Sequence[GpuInfo], locks: Sequence[FileLock]) -> None:
        self.indices: list[int] = [gpu["index"] for gpu in gpus]
        self.uuids: list[str] = [gpu["uuid"] or str(gpu["index"]) for gpu in gpus]
        self._locks = list(locks)

    def release(self) -> None:
        """Give the GPUs back. Safe to call more than once."""
        locks, self._locks = self._locks, []
        for lock in locks:
            lock.release(force=True)

    @property
    def held(self) -> bool:
        """Whether the lease still holds its locks (always False for an empty lease)."""
        return bool(self._locks)

    def __enter__(self) -> GpuLease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"GpuLease(indices={self.indices!r})"


class GpuAllocator:
    """Takes free GPUs of this host for a holder, exclusive across processes.

    A GPU is free when its lock file (``<lock_dir>/gpu-<index>.lock``) can be
    taken without waiting and its memory in use is below a fraction of its
    total. A GPU whose memory NVML cannot report counts as free of foreign use:
    the lock still keeps our own workers apart.

    Args:
        lock_dir: A host-local directory shared by all worker processes of the
            host (created if missing). Not a network file system.
        reader: Returns the host's GPUs; :func:`list_gpus` by default.
    """

    def __init__(self, lock_dir: Path | str, reader: Callable[[], list[GpuInfo]] | None = None) -> None:
        self.lock_dir = Path(lock_dir)
        self.reader: Callable[[], list[GpuInfo]] = reader if reader is not None else list_gpus

    def acquire(self, n: int, max_memory_used_fraction: float = 0.1) -> GpuLease | None:
        """Take ``n`` free GPUs, or none at all.

        Args:
            n: How many GPUs; 0 gives an empty lease at once.
            max_memory_used_fraction: A GPU with at least this fraction of its
                memory in use (by anyone) is busy.

        Returns:
            A lease on ``n`` GPUs (lowest free indices first), or None when fewer
            than ``n`` are free right now; nothing is held then.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"cannot acquire {n} GPUs")
        if n == 0:
            return GpuLease([], [])
        gpus = sorted(self.reader(), key=lambda gpu: gpu["index"])
        if len(gpus) < n:
            return None
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        taken: list[GpuInfo] = []
        locks: list[FileLock] = []
        for gpu in gpus:
            fraction = memory_used_fraction(gpu)
            if fraction is not None and fraction >= max_memory_used_fraction:
                log.debug("GPU %d is busy: %.0f%% of its memory in use", gpu["index"], fraction * 100)
                continue
            lock = FileLock(self.lock_dir / f"gpu-{gpu['index']}.lock", thread_local=False)
            try:
                lock.acquire(blocking=False)
            except Timeout:
                log.debug("GPU %d is held by another worker", gpu["index"])
                continue
            taken.append(gpu)
            locks.append(lock)
            if len(taken) == n:
                return GpuLease(taken, locks)
        for lock in locks:
            lock.release(force=True)
        return None
