"""Which onnxruntime execution provider an ONNX model image runs on.

Shared by the images that run ONNX models through onnxruntime (``ocr-rapidocr``,
``table-rapidtable``). A pure function of what onnxruntime offers (``onnxruntime.get_available_providers()``),
whether the container sees a GPU, and the model's ``device`` param; stdlib only, so
the host's test suite checks the choice without onnxruntime, RapidOCR or a GPU.

The CPU wheel (``onnxruntime``) offers no CUDA provider; the GPU wheel
(``onnxruntime-gpu``, built in with the ``ORT_PACKAGE`` build arg) lists
``CUDAExecutionProvider`` even on a host without a GPU, which is why the choice
also asks whether a GPU device is visible: a CPU model on a GPU-capable image must
not ask CUDA for a device the worker did not grant it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """The ``device`` param cannot be honoured here: a configuration error, not a sample error."""


def gpu_visible(dev: Path = Path("/dev")) -> bool:
    """Whether the container was given an NVIDIA GPU (the toolkit adds /dev/nvidia<N>)."""
    return any(p.name[len("nvidia") :].isdigit() for p in dev.glob("nvidia[0-9]*"))


def select_provider(available: Sequence[str], *, device: str = "auto", has_gpu: bool = True) -> str:
    """Return the execution provider to run the image's ONNX sessions on.

    Args:
        available: ``onnxruntime.get_available_providers()``.
        device: ``"auto"`` (CUDA when onnxruntime offers it and a GPU is visible,
            else CPU), ``"cpu"``, or ``"cuda"`` (CUDA or a DeviceError, never a
            silent fall back to CPU that would skew a GPU benchmark).
        has_gpu: whether the container sees a GPU (:func:`gpu_visible`).

    Raises:
        DeviceError: an unknown device, or ``"cuda"`` where CUDA cannot run.
    """
    wanted = str(device).strip().lower()
    if wanted not in DEVICES:
        raise DeviceError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if wanted == "cpu":
        return CPU
    cuda_ok = CUDA in available and has_gpu
    if cuda_ok:
        return CUDA
    if wanted == "cuda":
        why = (
            "no GPU is visible in the container (register the model with requires_gpu)"
            if CUDA in available
            else f"onnxruntime offers only {list(available)} (build the image with "
            "ORT_PACKAGE=onnxruntime-gpu==<version> on a CUDA base image)"
        )
        raise DeviceError(f"device 'cuda' was asked for, but {why}")
    return CPU


def engine_params(provider: str, device_id: int = 0) -> dict[str, object]:
    """RapidOCR (3.x) params that put its three ONNX sessions on ``provider``.

    Inside the container the GPUs the worker granted are numbered from 0.
    """
    if provider == CUDA:
        return {
            "EngineConfig.onnxruntime.use_cuda": True,
            "EngineConfig.onnxruntime.cuda_ep_cfg.device_id": int(device_id),
        }
    if provider == CPU:
        return {"EngineConfig.onnxruntime.use_cuda": False}
    raise DeviceError(f"unsupported execution provider {provider!r}")
