"""Host worker settings, from environment variables (no Django here).

A GPU host is configured with a handful of variables in its systemd unit; see
docs/operations.md. Everything has a default that works for the one-machine
setup under ``var/``.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent

# This worker start's identity: made once per process tree (Celery's pool children are forked
# after this module is imported, so they share it). A host that comes back with another one
# lost everything its previous start was running; the control side re-dispatches that at once.
INSTANCE_ID = uuid.uuid4().hex[:16]


def _paths(value: str) -> list[Path]:
    return [Path(p).resolve() for p in value.split(",") if p.strip()]


def _words(value: str) -> list[str]:
    return [w.strip() for w in value.split(",") if w.strip()]


def _s3_roots(value: str) -> tuple[str, ...]:
    """``s3://bucket/prefix/`` entries, normalised to end in ``/``; refuses anything else."""
    roots = []
    for raw in _words(value):
        if not raw.startswith("s3://") or len(raw) <= 5 or raw[5] == "/":
            raise ValueError(
                f"HYPERBENCH_ARTIFACTS_S3_ROOTS entries must be s3://bucket/prefix/, got {raw!r}"
            )
        segments = raw[5:].rstrip("/").split("/")
        if any(seg in ("", ".", "..") for seg in segments[1:]):
            raise ValueError(f"HYPERBENCH_ARTIFACTS_S3_ROOTS entry {raw!r} has an empty, '.' or '..' segment")
        roots.append(raw.rstrip("/") + "/")
    return tuple(roots)


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be a number, got {raw!r}") from e


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as e:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from e


@dataclass(frozen=True)
class HostConfig:
    broker_url: str = field(repr=False)  # may carry the host's broker password
    var_dir: Path
    work_dir: Path
    cache_dir: Path
    dataset_roots: list[Path]
    artifact_roots: list[Path]
    hostname: str
    instance: str = INSTANCE_ID
    container_user: str = "10001:10001"
    tmpfs_mb: int = 512
    visibility_timeout_s: int = 4 * 3600
    docker_timeout_s: int = 60
    gpu_wait_s: int = 3600
    gpu_retry_s: int = 15
    gpu_max_memory_used_fraction: float = 0.1
    heartbeat_s: int = 30
    # Events (worker/events.py): a shard's progress at most once per flush interval, sent with
    # every other waiting shard's as one message; sooner when this many shards wait.
    event_flush_s: float = 1.0
    event_batch_max: int = 500
    upload_window_s: int = (
        900  # how long a stage retries a transient artifact-store error (worker/publish.py)
    )
    api_endpoint_hosts: tuple[str, ...] = ()  # empty: any endpoint a staff member registered
    # S3 datasets and the node cache (worker/nodecache.py); endpoint, keys and buckets come from here only.
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: str = field(default="", repr=False)
    s3_session_token: str = field(default="", repr=False)
    s3_buckets: tuple[str, ...] = ()
    s3_concurrency: int = 64
    s3_max_attempts: int = 5
    s3_read_timeout_s: float = 30.0
    cache_budget_bytes: int = 100 * 1024**3
    cache_lock_timeout_s: int = 3600
    cache_verify: str = "stat"
    # The artifact store (worker/storage.py): s3:// artifacts go through the same endpoint and
    # keys as S3 datasets, and only under these roots (s3://bucket/prefix/).
    artifact_s3_roots: tuple[str, ...] = ()
    artifact_s3_max_attempts: int = 5
    artifact_s3_connect_timeout_s: float = 10.0
    artifact_s3_read_timeout_s: float = 60.0
    # A remote host's broker over TLS (worker/brokertls.py checks them; docs/operations.md,
    # "Joining a remote host"): the CA bundle (or "system"), and an optional client certificate.
    broker_ca_file: str = ""
    broker_cert_file: str = ""
    broker_key_file: str = ""


def load() -> HostConfig:
    var_dir = Path(os.environ.get("HYPERBENCH_VAR_DIR", str(REPO_DIR / "var"))).resolve()
    return HostConfig(
        broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
        var_dir=var_dir,
        work_dir=Path(os.environ.get("HYPERBENCH_WORK_DIR", str(var_dir / "work"))).resolve(),
        cache_dir=Path(os.environ.get("HYPERBENCH_CACHE_DIR", str(var_dir / "cache"))).resolve(),
        dataset_roots=_paths(os.environ.get("HYPERBENCH_DATASET_ROOTS", str(var_dir / "datasets"))),
        artifact_roots=_paths(os.environ.get("HYPERBENCH_ARTIFACT_ROOTS", str(var_dir / "artifacts"))),
        hostname=os.environ.get("HYPERBENCH_HOSTNAME", socket.gethostname()),
        visibility_timeout_s=_int("CELERY_VISIBILITY_TIMEOUT_S", 4 * 3600),
        docker_timeout_s=_int("HYPERBENCH_DOCKER_TIMEOUT_S", 60),
        gpu_wait_s=_int("HYPERBENCH_GPU_WAIT_S", 3600),
        gpu_retry_s=_int("HYPERBENCH_GPU_RETRY_S", 15),
        heartbeat_s=_int("HYPERBENCH_HEARTBEAT_S", 30),
        event_flush_s=_float("HYPERBENCH_EVENT_FLUSH_S", 1.0),
        event_batch_max=_int("HYPERBENCH_EVENT_BATCH_MAX", 500),
        upload_window_s=max(0, _int("HYPERBENCH_UPLOAD_WINDOW_S", 900)),
        api_endpoint_hosts=tuple(
            h for h in os.environ.get("HYPERBENCH_API_ENDPOINT_HOSTS", "").split(",") if h
        ),
        s3_endpoint_url=os.environ.get("HYPERBENCH_S3_ENDPOINT_URL") or None,
        s3_region=os.environ.get("HYPERBENCH_S3_REGION") or "us-east-1",
        s3_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", ""),
        s3_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
        s3_session_token=os.environ.get("AWS_SESSION_TOKEN", ""),
        s3_buckets=tuple(_words(os.environ.get("HYPERBENCH_S3_BUCKETS", ""))),
        s3_concurrency=_int("HYPERBENCH_S3_CONCURRENCY", 64),
        s3_max_attempts=_int("HYPERBENCH_S3_MAX_ATTEMPTS", 5),
        s3_read_timeout_s=_int("HYPERBENCH_S3_READ_TIMEOUT_S", 30),
        cache_budget_bytes=_int("HYPERBENCH_CACHE_BUDGET_BYTES", 100 * 1024**3),
        cache_lock_timeout_s=_int("HYPERBENCH_CACHE_LOCK_TIMEOUT_S", 3600),
        cache_verify=os.environ.get("HYPERBENCH_CACHE_VERIFY", "stat"),
        artifact_s3_roots=_s3_roots(os.environ.get("HYPERBENCH_ARTIFACTS_S3_ROOTS", "")),
        artifact_s3_max_attempts=max(1, _int("HYPERBENCH_ARTIFACTS_S3_MAX_ATTEMPTS", 5)),
        artifact_s3_connect_timeout_s=_float("HYPERBENCH_ARTIFACTS_S3_CONNECT_TIMEOUT_S", 10.0),
        artifact_s3_read_timeout_s=_float("HYPERBENCH_ARTIFACTS_S3_READ_TIMEOUT_S", 60.0),
        broker_ca_file=os.environ.get("HYPERBENCH_BROKER_CA_FILE", "").strip(),
        broker_cert_file=os.environ.get("HYPERBENCH_BROKER_CERT_FILE", "").strip(),
        broker_key_file=os.environ.get("HYPERBENCH_BROKER_KEY_FILE", "").strip(),
    )
