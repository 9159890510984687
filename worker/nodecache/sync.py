"""The sync orchestration: manifest first, paths checked, room made, objects fetched, then the seal."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from worker import contract
from worker.errors import HostError
from worker.manifest import DATASET_JSON, MANIFEST
from worker.nodecache import seal as sealing
from worker.nodecache import transfer
from worker.nodecache.layout import Layout, read_marker
from worker.nodecache.seal import hash_file, scan
from worker.nodecache.settings import MARKER, ProgressFn, S3Settings, Selection, SyncProgress, SyncResult
from worker.s3 import S3UriError, parse_s3_uri

logger = logging.getLogger(__name__)


class Progress:
    """Counts files and bytes as they are placed and calls the sink at most once a second."""

    def __init__(self, fn: ProgressFn | None, files_total: int, bytes_total: int) -> None:
        self.fn = fn
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = 0
        self.bytes_done = 0
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.t0 = time.monotonic()
        self.last = 0.0

    def add(self, nbytes: int, fetched: bool) -> None:
        self.files_done += 1
        self.bytes_done += nbytes
        if fetched:
            self.fetched_files += 1
            self.fetched_bytes += nbytes
        now = time.monotonic()
        if self.fn is not None and now - self.last >= 1.0:
            self.last = now
            self._emit("download")

    def _emit(self, phase: Literal["verify", "download", "done"]) -> None:
        if self.fn is None:
            return
        elapsed = max(1e-6, time.monotonic() - self.t0)
        tick = SyncProgress(
            phase,
            self.files_done,
            self.files_total,
            self.bytes_done,
            self.bytes_total,
            self.fetched_bytes / elapsed,
            self.fetched_files,
            self.fetched_bytes,
        )
        try:
            self.fn(tick)
        except Exception:  # a progress sink must never break a sync
            logger.warning("node cache: the progress callback failed", exc_info=True)

    def finish(self) -> None:
        self._emit("done")


def dataset_location(uri: str, buckets: tuple[str, ...]) -> tuple[str, str]:
    """(bucket, prefix ending in ``/`` or empty) of an ``s3://`` dataset; checks the host's allow-list."""
    try:
        bucket, prefix = parse_s3_uri(uri, prefix=True)
    except S3UriError as e:
        raise HostError(f"Dataset URI {e}.") from None
    if bucket not in buckets:
        allowed = ", ".join(buckets) or "none"
        raise HostError(
            f"Bucket {bucket!r} is not allowed on this host (allowed: {allowed}); "
            "set HYPERBENCH_S3_BUCKETS on the worker."
        )
    return bucket, prefix


def _sealed(vdir: Path, select: Selection) -> tuple[Selection, dict[str, Any]] | None:
    """The seal that covers ``select``: the whole version's, else the subset's own; None when neither."""
    whole = read_marker(vdir)
    if whole is not None:
        return Selection.everything(), whole
    name = sealing.marker_name(select)
    marker = read_marker(vdir, name) if name and name != MARKER else None
    return (select, marker) if marker is not None else None


def ensure(
    layout: Layout,
    s3: S3Settings,
    ref: contract.DatasetRef,
    on_progress: ProgressFn | None,
    select: Selection,
) -> SyncResult:
    """Check the sealed version (or sealed part), or sync it (the caller holds the version's sync lock)."""
    started = time.monotonic()
    name, sha = layout.names(ref)
    vdir = layout.version_dir(name, sha)
    repaired = 0
    sealed = _sealed(vdir, select)
    if sealed is not None:
        covered, marker = sealed
        files, bad = sealing.check_sealed(vdir, sha, marker, layout.cfg.verify, covered)
        if not bad:
            if on_progress:
                b = int(marker["bytes"])
                on_progress(SyncProgress("done", files, files, b, b, 0.0))
            took = time.monotonic() - started
            return SyncResult(vdir, int(marker["files"]), int(marker["bytes"]), 0, 0, 0, 0, took, True)
        sealing.unseal(vdir, bad, covered)
        repaired = len(bad)
        logger.warning("node cache: %s@%s failed its check (%d files); re-syncing", name, sha[:12], repaired)
    result = _sync(layout, s3, ref, vdir, on_progress, select)
    result.repaired_files = repaired
    result.seconds = time.monotonic() - started
    return result


def _sync(
    layout: Layout,
    s3: S3Settings,
    ref: contract.DatasetRef,
    vdir: Path,
    on_progress: ProgressFn | None,
    select: Selection,
) -> SyncResult:
    name, sha = layout.names(ref)
    bucket, prefix = dataset_location(ref["uri"], s3.buckets)
    staging = layout.staging(name, sha)
    shutil.rmtree(staging, ignore_errors=True)  # *.part files of a killed sync
    layout.cleanup_stale()
    staging.mkdir(parents=True)
    try:
        return asyncio.run(_sync_async(layout, s3, ref, (bucket, prefix), vdir, staging, on_progress, select))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prepare_vdir(vdir: Path) -> None:
    vdir.mkdir(parents=True, exist_ok=True)
    if vdir.is_symlink():
        raise HostError(f"{vdir} is a symlink; the node cache refuses symlinks.")
    vdir.chmod(0o755)


async def _fixed_files(
    fetcher: transfer.Fetcher, vdir: Path, sha: str, select: Selection
) -> tuple[int, int, int]:
    """The manifest (checked against the run spec before it is believed) and dataset.json.

    Returns (files, declared bytes, declared bytes still missing) of the selected entries.
    """
    manifest = vdir / MANIFEST
    if not (manifest.is_file() and not manifest.is_symlink() and hash_file(str(manifest), "sha256") == sha):
        part = await fetcher.fetch(MANIFEST, None, None, expect_sha=sha, what="the manifest")
        counts = scan(Path(part), vdir, select)
        os.replace(part, manifest)
    else:
        counts = scan(manifest, vdir, select)
    if not (vdir / DATASET_JSON).is_file() or (vdir / DATASET_JSON).is_symlink():
        part = await fetcher.fetch(DATASET_JSON, None, None, what=DATASET_JSON)
        os.replace(part, vdir / DATASET_JSON)
    return counts


def _make_room(layout: Layout, name: str, sha: str, vdir: Path, need: int) -> None:
    layout.evict(need, keep=(name, sha))
    free = shutil.disk_usage(vdir).free
    if need > free:
        raise HostError(
            f"The node cache's disk has {free} bytes free and dataset {name} needs {need} more; "
            "free space or move HYPERBENCH_CACHE_DIR.",
            permanent=True,
        )


async def _sync_async(
    layout: Layout,
    s3: S3Settings,
    ref: contract.DatasetRef,
    where: tuple[str, str],
    vdir: Path,
    staging: Path,
    on_progress: ProgressFn | None,
    select: Selection,
) -> SyncResult:
    name, sha = layout.names(ref)
    bucket, prefix = where
    fetcher = transfer.Fetcher(s3, transfer.store(s3, bucket), prefix, staging, bucket)
    _prepare_vdir(vdir)
    files_total, declared, missing = await _fixed_files(fetcher, vdir, sha, select)  # 1. the manifest
    _make_room(layout, name, sha, vdir, missing)  # 2. room for what is not here yet
    progress = Progress(on_progress, files_total, declared)  # 3. the selected objects
    await transfer.fetch_all(fetcher, vdir / MANIFEST, vdir, layout.donor(name, sha), progress, select)
    sealed_files, total_bytes = sealing.seal(vdir, sha, select)  # 4. seal
    progress.finish()
    return SyncResult(
        vdir,
        sealed_files,
        total_bytes,
        fetcher.fetched_files,
        fetcher.fetched_bytes,
        fetcher.reused_files,
        0,
        0.0,
        False,
    )
