"""Hardened, ephemeral containers through the Docker SDK.

Everything a container may do is decided here, from the registered model and
the host's configuration; nothing in a run spec can add a mount, a device, a
capability or a network. The worker keeps its own wall-clock deadline because
Celery's time limits never reach into a container.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import DeviceRequest, Mount

from worker import contract
from worker.errors import HostError

logger = logging.getLogger(__name__)

LABEL_PREFIX = "org.hyperbench"
MANAGED_LABEL = f"{LABEL_PREFIX}.managed"


@dataclass(frozen=True)
class BindMount:
    source: Path
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerSpec:
    """What to run. Built by the worker's tasks from the run spec and host config."""

    image: str
    digest: str  # expected image id (sha256:...); required, a container never runs unpinned
    mounts: list[BindMount]
    labels: dict[str, str]
    timeout_s: int
    memory_mb: int
    cpus: float
    pids: int
    user: str = "10001:10001"
    tmpfs_mb: int = 512
    network: bool = False
    gpu_ids: list[str] = field(default_factory=list)
    stop_grace_s: int = 10  # after the deadline: SIGTERM, this long, then SIGKILL


@dataclass
class ContainerResult:
    exit_code: int
    oom_killed: bool
    timed_out: bool
    image_id: str
    log_tail: str
    duration_s: float


_client: docker.DockerClient | None = None


def client(timeout_s: int = 60) -> docker.DockerClient:
    """One Docker client per process, with a timeout on every API call."""
    global _client
    if _client is None:
        try:
            _client = docker.from_env(timeout=timeout_s)
            _client.ping()
        except DockerException as e:
            _client = None
            raise HostError(
                f"The Docker engine is not reachable on this host ({e}); "
                "start it (scripts/ensure-docker.sh).",
                permanent=False,
            ) from e
    return _client


def local_image_id(spec_image: str) -> str:
    """Return the id of the image a reference names on this host, without checking any pin.

    For operators (``python -m worker.validate_image`` prints the id to register);
    a run goes through :func:`resolve_image`.

    Raises:
        HostError: the image is not on this host, or Docker cannot inspect it.
    """
    try:
        img = client().images.get(spec_image)
    except ImageNotFound as e:
        raise HostError(
            f"Model image {spec_image} is not present on this host; build or load it there "
            "(make images, or docker load) and retry the run."
        ) from e
    except (APIError, requests.RequestException) as e:
        raise HostError(f"Docker could not inspect image {spec_image}: {e}", permanent=False) from e
    return str(img.id)


def resolve_image(spec_image: str, expected_digest: str) -> str:
    """Return the local image id for a pinned image (a registered model, or a system image), or refuse.

    Raises:
        HostError: the spec carries no valid pin (never run what a tag happens to
            point to), the image is not on this host, or its id differs from the
            pinned one (the tag was re-pointed).
    """
    if not contract.is_image_id(expected_digest):
        raise HostError(
            f"Image {spec_image} arrived without a pinned image id ({expected_digest!r}); only pinned "
            "images run. Register the model with its digest, or set the system image's *_DIGEST setting."
        )
    image_id = local_image_id(spec_image)
    if image_id != expected_digest:
        raise HostError(
            f"Image {spec_image} on this host is {image_id[:19]}, not the registered {expected_digest[:19]}: "
            "the tag was re-pointed. Register the new digest (staff) or restore the registered image."
        )
    return image_id


def container_options(spec: ContainerSpec, image_id: str, *, worker_pid: int | None = None) -> dict[str, Any]:
    """The keyword arguments of ``containers.create`` for a spec: every hardening rule in one place.

    Pure (no Docker call), so a test can check that nothing a user sends ever
    widens them. ``worker_pid`` defaults to this process (the sweep's label).
    """
    mounts = [Mount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in spec.mounts]
    device_requests = (
        [DeviceRequest(device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])] if spec.gpu_ids else None
    )
    pid = os.getpid() if worker_pid is None else worker_pid
    labels = {**spec.labels, MANAGED_LABEL: "1", f"{LABEL_PREFIX}.worker-pid": str(pid)}
    return {
        "image": image_id,
        "detach": True,
        "user": spec.user,
        # No bridge on these engines: an API model gets the host's network, every other one none.
        "network_mode": "host" if spec.network else "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        # mode 1777: the non-root container user must be able to write its scratch space.
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmpfs_mb}m,mode=1777"},
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",  # = mem_limit: no swap
        "pids_limit": spec.pids,
        "nano_cpus": int(spec.cpus * 1e9),
        "mounts": mounts,
        "labels": labels,
        "environment": {"HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
        "device_requests": device_requests,
        "ipc_mode": "private",
    }


def run(
    spec: ContainerSpec, *, on_tick: Callable[[], None] | None = None, tick_s: float = 1.0
) -> ContainerResult:
    """Run one container to completion under the hardening rules, then remove it.

    Args:
        spec: image, mounts and limits; see ContainerSpec.
        on_tick: called about every ``tick_s`` while the container runs (progress).

    Returns:
        The exit code, whether the kernel OOM-killed it, whether our deadline
        stopped it, and the tail of its log.
    """
    image_id = resolve_image(spec.image, spec.digest)
    dc = client()
    started = time.monotonic()
    try:
        container = dc.containers.create(**container_options(spec, image_id))
    except (APIError, requests.RequestException) as e:
        raise HostError(
            f"Docker refused to create the container for {spec.image}: {e}", permanent=False
        ) from e
    timed_out = False
    try:
        container.start()
        deadline = started + spec.timeout_s
        while True:
            try:
                container.wait(timeout=tick_s)
                break
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass
            if on_tick is not None:
                on_tick()
            if time.monotonic() > deadline:
                timed_out = True
                logger.warning(
                    "container %s passed its %ss deadline; stopping", container.short_id, spec.timeout_s
                )
                container.stop(timeout=spec.stop_grace_s)  # SIGTERM, then SIGKILL after the grace
                container.wait(timeout=30)
                break
        if on_tick is not None:
            on_tick()
        container.reload()
        state = container.attrs.get("State", {})
        log_tail = container.logs(tail=200).decode("utf-8", "replace")
        return ContainerResult(
            exit_code=int(state.get("ExitCode", -1)),
            oom_killed=bool(state.get("OOMKilled", False)),
            timed_out=timed_out,
            image_id=image_id,
            log_tail=log_tail,
            duration_s=time.monotonic() - started,
        )
    except (APIError, requests.RequestException) as e:
        raise HostError(f"Docker failed while running {spec.image}: {e}", permanent=False) from e
    finally:
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except (APIError, requests.RequestException):
            logger.exception("could not remove container %s; the next sweep will", container.short_id)


def sweep_orphans() -> int:
    """Remove containers started by worker processes of this host that are gone.

    Called when a worker starts: a worker killed with -9 leaves its containers
    behind, and they would hold GPUs and memory forever.
    """
    removed = 0
    try:
        found = client().containers.list(all=True, filters={"label": MANAGED_LABEL})
    except HostError:
        return 0
    for c in found:
        pid = c.labels.get(f"{LABEL_PREFIX}.worker-pid", "")
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        try:
            c.remove(force=True)
            removed += 1
        except (NotFound, APIError):
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_failure(name: str, result: ContainerResult, timeout_s: int, memory_mb: int) -> str:
    """A reason a person can act on, for a container that did not exit 0."""
    if result.timed_out:
        return (
            f"{name} ran past its {timeout_s}s deadline and was stopped; raise the limit or shrink the shard."
        )
    if result.oom_killed:
        return (
            f"{name} ran out of memory (killed at its {memory_mb} MB limit); raise the model's memory limit."
        )
    tail = result.log_tail.strip().splitlines()[-5:]
    last = " | ".join(tail) if tail else "no output"
    return f"{name} exited with code {result.exit_code}. Last log lines: {last}"
