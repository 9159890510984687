"""The node cache's settings and the values it hands back (no Django, no I/O)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from worker import contract

MARKER = ".complete"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


@dataclass(frozen=True)
class S3Settings:
    """Where and how the host reads S3; from the host's settings only, never from a run spec."""

    endpoint_url: str | None
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    buckets: tuple[str, ...] = ()
    concurrency: int = 64
    max_attempts: int = 5
    backoff_base_s: float = 0.2
    backoff_max_s: float = 5.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 30.0


@dataclass(frozen=True)
class CacheSettings:
    root: Path
    budget_bytes: int
    lock_timeout_s: float = 3600.0
    verify: Literal["stat", "full"] = "stat"


@dataclass
class SyncProgress:
    """A progress tick. ``bytes_total`` counts declared sizes only (0 when the manifest has none)."""

    phase: Literal["verify", "download", "done"]
    files_done: int
    files_total: int
    bytes_done: int
    bytes_total: int
    rate_bps: float
    fetched_files: int = 0
    fetched_bytes: int = 0


@dataclass
class SyncResult:
    path: Path
    files: int
    bytes: int
    fetched_files: int
    fetched_bytes: int
    reused_files: int
    repaired_files: int
    seconds: float
    already_complete: bool


@dataclass(frozen=True)
class CacheEntry:
    """One cached version, as the admin's cache view shows it."""

    name: str
    manifest_sha256: str
    path: Path
    bytes: int
    complete: bool
    last_used: float
    in_use: bool


ProgressFn = Callable[[SyncProgress], None]


@dataclass(frozen=True)
class Selection:
    """Which samples' objects a lease needs (the manifest and ``dataset.json`` always come).

    A shard reads only its own samples, evaluation only the manifest, a report only the
    images its gallery shows: N hosts running N shards fetch the dataset about once
    between them. ``key`` names the subset's seal marker (``.complete.<key>``); the whole
    version keeps the plain ``.complete``, and a set of ids is fetched without a marker.
    """

    shard: int | None = None
    shards: int | None = None
    ids: frozenset[str] | None = None
    manifest_only: bool = False

    @classmethod
    def everything(cls) -> Selection:
        return cls()

    @classmethod
    def of_shard(cls, shard: int, shards: int) -> Selection:
        return cls() if shards <= 1 else cls(shard=shard, shards=shards)

    @classmethod
    def of_ids(cls, ids: frozenset[str] | set[str]) -> Selection:
        return cls(ids=frozenset(ids))

    @classmethod
    def manifest(cls) -> Selection:
        return cls(manifest_only=True)

    @property
    def whole(self) -> bool:
        return self.shards is None and self.ids is None and not self.manifest_only

    @property
    def key(self) -> str | None:
        """The subset marker's suffix; None for a set of ids (no marker) and for the whole version."""
        if self.manifest_only:
            return "manifest"
        if self.shards is not None:
            return f"shard-{self.shard}-of-{self.shards}"
        return None

    def wants(self, index: int, sample_id: str) -> bool:
        """Whether the sample on the manifest's 0-based line ``index`` is in the subset."""
        if self.manifest_only:
            return False
        if self.shards is not None:
            return contract.shard_of(index, self.shards) == self.shard
        if self.ids is not None:
            return sample_id in self.ids
        return True


EVERYTHING = Selection()  # the default of every lease: the whole version
