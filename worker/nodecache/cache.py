"""The facade: :class:`NodeCache`, what the tasks, telemetry and the worker's start-up use."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from worker import contract
from worker.errors import HostError
from worker.nodecache import sync as syncing
from worker.nodecache.layout import Layout
from worker.nodecache.settings import (
    EVERYTHING,
    CacheEntry,
    CacheSettings,
    ProgressFn,
    S3Settings,
    Selection,
    SyncResult,
)


class NodeCache:
    """The node cache of one host. Safe to use from many processes at once."""

    def __init__(self, cache: CacheSettings, s3: S3Settings) -> None:
        self.cfg = cache
        self.s3 = s3
        self.root = Path(cache.root)
        self.layout = Layout(cache)

    @classmethod
    def from_config(cls, cfg: Any) -> NodeCache:
        """The node cache configured by a :class:`worker.config.HostConfig`."""
        if cfg.cache_verify not in ("stat", "full"):
            raise HostError(f"HYPERBENCH_CACHE_VERIFY must be 'stat' or 'full', not {cfg.cache_verify!r}.")
        if not cfg.s3_access_key_id or not cfg.s3_secret_access_key:
            raise HostError(
                "S3 datasets need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the host worker's "
                "environment."
            )
        return cls(
            CacheSettings(
                root=cfg.cache_dir,
                budget_bytes=cfg.cache_budget_bytes,
                lock_timeout_s=float(cfg.cache_lock_timeout_s),
                verify=cfg.cache_verify,
            ),
            S3Settings(
                endpoint_url=cfg.s3_endpoint_url,
                region=cfg.s3_region,
                access_key_id=cfg.s3_access_key_id,
                secret_access_key=cfg.s3_secret_access_key,
                session_token=cfg.s3_session_token or None,
                buckets=tuple(cfg.s3_buckets),
                concurrency=cfg.s3_concurrency,
                max_attempts=max(1, cfg.s3_max_attempts),
                read_timeout_s=float(cfg.s3_read_timeout_s),
            ),
        )

    def version_dir(self, name: str, sha: str) -> Path:
        return self.layout.version_dir(name, sha)

    @contextlib.contextmanager
    def lease(
        self,
        ref: contract.DatasetRef,
        on_progress: ProgressFn | None = None,
        select: Selection = EVERYTHING,
    ) -> Iterator[Path]:
        """Sync the ``select``ed objects (or check them) and hold the version in use until the block ends.

        While the block runs, eviction never removes the version. Yields the
        version's directory, to be mounted read-only (only the selected samples'
        objects are sure to be there).
        """
        name, sha = self.layout.names(ref)
        with self.layout.sync_lock(name, sha):
            result = syncing.ensure(self.layout, self.s3, ref, on_progress, select)
            fd = self.layout.hold_lease(name, sha)
        try:
            yield result.path
        finally:
            os.close(fd)

    def sync(
        self,
        ref: contract.DatasetRef,
        on_progress: ProgressFn | None = None,
        select: Selection = EVERYTHING,
    ) -> SyncResult:
        """Make the version (or its ``select``ed part) complete and verified, without holding it."""
        name, sha = self.layout.names(ref)
        with self.layout.sync_lock(name, sha):
            result = syncing.ensure(self.layout, self.s3, ref, on_progress, select)
        self.layout.touch_lease(name, sha)
        return result

    def entries(self) -> list[CacheEntry]:
        """Every version on disk, complete or not, most recently used first."""
        return self.layout.entries()

    def evict(self, need_bytes: int = 0, *, keep: tuple[str, str] | None = None) -> int:
        """Remove least recently used versions not in use until ``need_bytes`` more fit the budget."""
        return self.layout.evict(need_bytes, keep=keep)

    def cleanup_stale(self) -> int:
        """Remove staging dirs (``*.part`` files) left by killed syncs. Returns how many."""
        return self.layout.cleanup_stale()
