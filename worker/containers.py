"""Hardened, ephemeral containers through the Docker SDK.

Everything a container may do is decided here, from the registered model and
the host's configuration; nothing in a run spec can add a mount, a device, a
capability or a network. The worker keeps its own wall-clock deadline because
Celery's time limits never reach into a container.
"""

from __future__ import annotations

import contextlib
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
HOST_LABEL = f"{LABEL_PREFIX}.host"  # the HYPERBENCH_HOSTNAME that started it (hosts may share an engine)
CANCEL_GRACE_S = 3  # a cancelled run's container: SIGTERM, this long, then SIGKILL


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
    host: str = ""  # the host worker's HYPERBENCH_HOSTNAME, labelled so hosts sharing an engine tell theirs


@dataclass
class ContainerResult:
    exit_code: int
    oom_killed: bool
    timed_out: bool
    image_id: str
    log_tail: str
    duration_s: float
    cancelled: bool = False  # stopped because its run was cancelled


_client: docker.DockerClient | None = None


def client(timeout_s: int | None = None) -> docker.DockerClient:
    """One Docker client per process, with a timeout on every API call
    (``HYPERBENCH_DOCKER_TIMEOUT_S``, 60 s: not the container's deadline)."""
    global _client
    if _client is None:
        if timeout_s is None:
            from worker.config import load

            timeout_s = load().docker_timeout_s
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
    if spec.host:
        labels[HOST_LABEL] = spec.host
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


def cli_flags(opts: dict[str, Any], *, labels: bool = True) -> list[str]:
    """``docker run`` flags for :func:`container_options` (the same hardened container, from the CLI).

    For the benchmark's ``docker run`` anchor and the image tests, so that no copy of
    the hardening list can drift from the one the platform uses. ``labels=False``
    leaves out the platform's labels (a container a host worker must not count as its own).
    """
    flags = [
        f"--user={opts['user']}",
        f"--network={opts['network_mode']}",
        f"--ipc={opts['ipc_mode']}",
        "--read-only",
        f"--memory={opts['mem_limit']}",
        f"--memory-swap={opts['memswap_limit']}",
        f"--pids-limit={opts['pids_limit']}",
        f"--cpus={opts['nano_cpus'] / 1e9}",
    ]
    flags += [f"--cap-drop={c}" for c in opts["cap_drop"]]
    flags += [f"--security-opt={s}" for s in opts["security_opt"]]
    flags += [f"--tmpfs={k}:{v}" for k, v in opts["tmpfs"].items()]
    flags += [f"--env={k}={v}" for k, v in opts["environment"].items()]
    if labels:
        flags += [f"--label={k}={v}" for k, v in opts["labels"].items()]
    for m in opts["mounts"]:
        ro = ",readonly" if m["ReadOnly"] else ""
        flags.append(f"--mount=type=bind,source={m['Source']},target={m['Target']}{ro}")
    return flags


def hardened_cli_flags(*, memory_mb: int = 1024, pids: int = 256, tmpfs_mb: int = 64) -> list[str]:
    """The hardening flags alone (no mounts, labels or image), for running an image by hand."""
    spec = ContainerSpec(
        image="", digest="", mounts=[], labels={}, timeout_s=1, memory_mb=memory_mb, cpus=2.0, pids=pids,
        tmpfs_mb=tmpfs_mb,
    )  # fmt: skip
    return cli_flags(container_options(spec, ""), labels=False)


def run(
    spec: ContainerSpec,
    *,
    on_tick: Callable[[], None] | None = None,
    tick_s: float = 1.0,
    should_stop: Callable[[], bool] | None = None,
) -> ContainerResult:
    """Run one container to completion under the hardening rules, then remove it.

    Args:
        spec: image, mounts and limits; see ContainerSpec.
        on_tick: called about every ``tick_s`` while the container runs (progress).
        should_stop: asked before the start and at every tick; True stops the
            container (its run was cancelled) and the result says ``cancelled``.

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
    stop = should_stop or (lambda: False)
    try:
        timed_out, cancelled = _supervise(container, spec, started, on_tick, tick_s, stop)
        if on_tick is not None and not cancelled:
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
            cancelled=cancelled,
        )
    except (APIError, requests.RequestException) as e:
        if stop():
            # The cancel removed the container under us: that is the cancel, not an engine failure.
            return ContainerResult(-1, False, False, image_id, "", time.monotonic() - started, cancelled=True)
        raise HostError(f"Docker failed while running {spec.image}: {e}", permanent=False) from e
    finally:
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except (APIError, requests.RequestException):
            logger.exception("could not remove container %s; the next sweep will", container.short_id)


def _supervise(
    container: Any,
    spec: ContainerSpec,
    started: float,
    on_tick: Callable[[], None] | None,
    tick_s: float,
    stop: Callable[[], bool],
) -> tuple[bool, bool]:
    """Start the container and watch it until it exits, its run is cancelled (``stop``) or it
    passes its deadline; stop it in the last two cases. Returns (timed_out, cancelled)."""
    if stop():
        return False, True  # cancelled before it started: never start it
    container.start()
    deadline = started + spec.timeout_s
    while True:
        try:
            container.wait(timeout=tick_s)
            return False, False
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            pass
        if on_tick is not None:
            on_tick()
        if stop():
            logger.info("container %s: its run was cancelled; stopping", container.short_id)
            container.stop(timeout=CANCEL_GRACE_S)
            return False, True
        if time.monotonic() > deadline:
            logger.warning(
                "container %s passed its %ss deadline; stopping", container.short_id, spec.timeout_s
            )
            container.stop(timeout=spec.stop_grace_s)  # SIGTERM, then SIGKILL after the grace
            container.wait(timeout=30)
            return True, False


def _managed(host: str | None, **labels: str) -> list[Any]:
    """Containers of this platform (of ``host`` when given) carrying every one of ``labels``."""
    wanted = [MANAGED_LABEL] + ([f"{HOST_LABEL}={host}"] if host else [])
    wanted += [f"{LABEL_PREFIX}.{k}={v}" for k, v in labels.items()]
    return list(client().containers.list(all=True, filters={"label": wanted}))


def _remove_orphans(found: list[Any]) -> int:
    """Remove the containers among ``found`` whose worker process is gone; return how many."""
    removed = 0
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


def sweep_orphans(host: str | None = None) -> int:
    """Remove containers started by worker processes (of ``host``, when given) that are gone.

    Called when a worker starts and at every heartbeat: a worker (or a pool
    child) killed with -9 leaves its containers behind, and they would hold GPUs
    and memory forever. Hosts that share one Docker engine (several host
    workers on one machine) sweep only their own.
    """
    try:
        return _remove_orphans(_managed(host))
    except (HostError, APIError, requests.RequestException):
        return 0


def remove_orphans_of(host: str, *, run: int, shard: int) -> int:
    """Remove this host's containers of one shard whose worker process is gone.

    Called with the shard's lock held, before its container starts: a pool
    child killed mid-shard leaves its container running while the message is
    delivered again, and the shard must never run twice at once.
    """
    return _remove_orphans(_managed(host, run=str(run), shard=str(shard)))


def stop_run(host: str | None, run: int, *, grace_s: int = CANCEL_GRACE_S) -> int:
    """Stop, then kill after ``grace_s``, then remove every container of ``run`` (on ``host``).

    The cancel path: the containers are gone when this returns. Returns how many there were.
    """
    stopped = 0
    for c in _managed(host, run=str(run)):
        with contextlib.suppress(NotFound, APIError, requests.RequestException):
            c.stop(timeout=grace_s)
        try:
            c.remove(force=True)
        except NotFound:
            pass
        except (APIError, requests.RequestException):
            logger.warning("could not remove container %s of cancelled run %s", c.short_id, run)
            continue
        stopped += 1
    return stopped


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
