"""The node cache: S3 dataset versions synced to local disk before a run (no Django).

Layout (see "Node cache" in the design brief)::

    <root>/datasets/<name>/<manifest-sha>/      the version: dataset.json, manifest.jsonl, images, .complete
    <root>/staging/<name>-<manifest-sha>/      *.part files of the sync in progress (removed at the end)
    <root>/locks/<name>/<manifest-sha>.sync    one syncing process per version and node (filelock)
    <root>/locks/<name>/<manifest-sha>.lease   shared flock held by each run using it; mtime = last use

How a version becomes usable:

1. Under the version's sync lock, the manifest is fetched to a ``.part`` and checked
   against the run spec's ``manifest_sha256``; every image path in it is checked (hostile
   keys: ``..``, absolute paths, symlinked directories) before anything else is written.
2. The objects the manifest names are fetched by many concurrent GETs over one
   connection pool (asyncio + aiohttp, SigV4 signed here), each to a ``.part`` that is
   renamed into place only when its size and checksum are right: sha256 when the
   manifest declares one, else the size and the MD5 ETag of a single-part object.
   Transient S3 errors (5xx, SlowDown, resets, stalls) are retried with backoff, a
   bounded number of times; then the sync fails with a :class:`HostError` and no marker.
3. The ``.complete`` marker is written last. It records ``sealed_ctime_ns``: the newest
   inode change time of any file of the version when it was sealed, and the marker is
   only written once the clock has moved past it.

Why that marker is enough for a cheap re-check: any later write, truncate, chmod,
rename or link of a cached file moves its ctime past ``sealed_ctime_ns``, and ctime
cannot be set back from user space (unlike mtime). So a later use streams the
manifest (hashing it again: the manifest decides what every other check means) and
``lstat`` s each file: one syscall per file, no reads and no requests. A byte flipped
after completion is found there, the file is removed and fetched again. Bit rot under
the filesystem is not caught by this; ``verify="full"`` re-hashes every file that has
a declared sha256.

Memory stays flat with the dataset's size: the manifest is streamed (three passes:
check, fetch, and seal), downloads are fed through a bounded queue, and nothing keeps
a per-sample table.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import re
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlparse

from filelock import FileLock
from filelock import Timeout as LockTimeout

from worker import contract
from worker.errors import HostError
from worker.manifest import DATASET_JSON, MANIFEST, check_image_path

logger = logging.getLogger(__name__)

MARKER = ".complete"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_CHUNK = 1024 * 1024
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"})
_MAX_LISTED_PROBLEMS = 10
_DIR_CACHE_SIZE = 4096
_RANGE_PART = 16 * 1024 * 1024  # objects of two parts or more are fetched as parallel ranges


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


class _Transient(Exception):
    """A failure worth another attempt (5xx, SlowDown, reset, stall, a corrupt transfer)."""


# --- SigV4 for plain GETs (botocore's signer costs more per request than the transfer) ---


class _Signer:
    def __init__(self, s3: S3Settings) -> None:
        self.s3 = s3
        self._day = ""
        self._key = b""

    def headers(self, host: str, path: str, query: str = "") -> dict[str, str]:
        now = dt.datetime.now(dt.UTC)
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        day = amz_date[:8]
        if day != self._day:
            k = ("AWS4" + self.s3.secret_access_key).encode()
            for part in (day, self.s3.region, "s3", "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, k
        payload = "UNSIGNED-PAYLOAD"
        headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
        if self.s3.session_token:
            headers["x-amz-security-token"] = self.s3.session_token
        names = sorted(headers)
        canonical = "\n".join(
            [
                "GET",
                path,
                query,
                "".join(f"{n}:{headers[n]}\n" for n in names),
                ";".join(names),
                payload,
            ]
        )
        scope = f"{day}/{self.s3.region}/s3/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.s3.access_key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
        del headers["host"]
        return headers


# --- small helpers ---------------------------------------------------------------------


def parse_s3_uri(uri: str, buckets: tuple[str, ...]) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix ending in ``/`` or empty). Checks the allow-list."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise HostError(f"Dataset URI {uri!r} is not an s3://bucket/prefix/ URI.")
    bucket = parsed.netloc
    if bucket not in buckets:
        allowed = ", ".join(buckets) or "none"
        raise HostError(
            f"Bucket {bucket!r} is not allowed on this host (allowed: {allowed}); "
            "set HYPERBENCH_S3_BUCKETS on the worker."
        )
    prefix = unquote(parsed.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise HostError(f"Dataset URI {uri!r} has a '.' or '..' segment.")
    return bucket, prefix


def _backoff(s3: S3Settings, attempt: int) -> float:
    # Full jitter: synchronized retries from many workers would hit a throttled server together.
    return random.uniform(0, min(s3.backoff_max_s, s3.backoff_base_s * (2**attempt)))  # noqa: S311


def _error_code(body: bytes) -> str:
    m = re.search(rb"<Code>([^<]{1,64})</Code>", body)
    return m.group(1).decode("ascii", "replace") if m else ""


def _lock_flock(path: Path, mode: int) -> int | None:
    """Open ``path`` and flock it; None when ``LOCK_NB`` is set and it is held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, mode)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Paths:
    """Maps manifest image paths to local paths under one version dir, refusing escapes and symlinks."""

    def __init__(self, version_dir: Path) -> None:
        self.real_root = os.path.realpath(version_dir)
        self._dirs: dict[str, bool] = {}

    def local(self, image: str) -> str:
        """The absolute local path of ``image``; raises HostError when it would leave the version dir."""
        wrong = check_image_path(image)
        if wrong is not None:
            raise HostError(wrong)
        full = os.path.normpath(os.path.join(self.real_root, image))
        if not full.startswith(self.real_root + os.sep):
            raise HostError(f"image {image!r} leaves the dataset directory")
        parent = os.path.dirname(full)
        ok = self._dirs.get(parent)
        if ok is None:
            # realpath follows any symlinked directory: a link planted in the cache that
            # points elsewhere makes the parent resolve outside the root.
            real_parent = os.path.realpath(parent)
            ok = real_parent == self.real_root or real_parent.startswith(self.real_root + os.sep)
            if ok and real_parent != parent:
                ok = False
            if len(self._dirs) >= _DIR_CACHE_SIZE:
                self._dirs.clear()
            self._dirs[parent] = ok
        if not ok:
            raise HostError(f"image {image!r}: a directory on its path in the cache is a symlink; refused")
        return full

    def ensure_parent(self, full: str) -> None:
        parent = os.path.dirname(full)
        if os.path.isdir(parent) and not os.path.islink(parent):
            return
        rel = os.path.relpath(parent, self.real_root)
        cur = self.real_root
        for seg in rel.split(os.sep):
            cur = os.path.join(cur, seg)
            try:
                os.mkdir(cur, 0o755)
            except FileExistsError:
                st = os.lstat(cur)
                if not stat.S_ISDIR(st.st_mode):
                    raise HostError(
                        f"{cur} in the cache is not a directory (a symlink or a file); refused"
                    ) from None
        self._dirs.pop(parent, None)


@dataclass
class _Entry:
    lineno: int
    image: str
    full: str
    size: int | None
    sha256: str | None


def _iter_entries(manifest: Path, paths: _Paths, hasher: Any = None) -> Iterator[_Entry]:
    """Stream the manifest's entries; a bad line raises HostError naming it."""
    with open(manifest, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if hasher is not None:
                hasher.update(raw)
            try:
                row = json.loads(raw)
            except ValueError as e:
                raise HostError(f"{MANIFEST} line {lineno}: not JSON ({e})") from e
            if not isinstance(row, dict):
                raise HostError(f"{MANIFEST} line {lineno}: not a JSON object")
            image = row.get("image")
            try:
                full = paths.local(image)  # type: ignore[arg-type]
            except HostError as e:
                raise HostError(f"{MANIFEST} line {lineno}: {e}") from None
            size = row.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                size = None
            sha = row.get("sha256")
            if not isinstance(sha, str) or not _SHA256_HEX.match(sha):
                sha = None
            yield _Entry(lineno, str(image), full, size, sha)


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _hash_range(path: str, h: Any, start: int, end: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
            if not chunk:
                raise OSError(errno.EIO, f"{path} is shorter than {end} bytes")
            h.update(chunk)
            pos += len(chunk)
    finally:
        os.close(fd)


def _hash_file(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _disk_full(where: Path | str, e: OSError) -> HostError:
    return HostError(
        f"The node cache's disk is full ({where}: {e.strerror}); free space, lower "
        "HYPERBENCH_CACHE_BUDGET_BYTES below the disk's size, or move HYPERBENCH_CACHE_DIR.",
        permanent=True,
    )


# --- the cache -------------------------------------------------------------------------


class NodeCache:
    """The node cache of one host. Safe to use from many processes at once."""

    def __init__(self, cache: CacheSettings, s3: S3Settings) -> None:
        self.cfg = cache
        self.s3 = s3
        self.root = Path(cache.root)
        self._signer = _Signer(s3)

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

    # -- paths

    def _names(self, ref: contract.DatasetRef) -> tuple[str, str]:
        name, sha = ref["name"], ref["manifest_sha256"]
        if not _SAFE_NAME.match(name):
            raise HostError(f"Dataset name {name!r} cannot name a cache directory.")
        if not _SHA256_HEX.match(sha):
            raise HostError(f"Dataset {name}: manifest_sha256 {sha!r} is not a sha256.")
        return name, sha

    def version_dir(self, name: str, sha: str) -> Path:
        return self.root / "datasets" / name / sha

    def _staging(self, name: str, sha: str) -> Path:
        return self.root / "staging" / f"{name}-{sha}"

    def _lock_path(self, name: str, sha: str, kind: str) -> Path:
        d = self.root / "locks" / name
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{sha}.{kind}"

    def _prepare_root(self) -> None:
        for sub in ("datasets", "staging", "locks"):
            p = self.root / sub
            p.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                raise HostError(f"{p} is a symlink; the node cache refuses symlinks.")
        self.root.chmod(0o755)
        (self.root / "datasets").chmod(0o755)

    # -- public API

    @contextlib.contextmanager
    def lease(self, ref: contract.DatasetRef, on_progress: ProgressFn | None = None) -> Iterator[Path]:
        """Sync the version (or check it) and hold it in use until the block ends.

        While the block runs, eviction never removes the version. Yields the
        version's directory, to be mounted read-only.
        """
        name, sha = self._names(ref)
        with self._sync_lock(name, sha):
            result = self._ensure(ref, on_progress)
            fd = _lock_flock(self._lock_path(name, sha, "lease"), fcntl.LOCK_SH)
            assert fd is not None
            os.utime(fd)  # the LRU clock
        try:
            yield result.path
        finally:
            os.close(fd)

    def sync(self, ref: contract.DatasetRef, on_progress: ProgressFn | None = None) -> SyncResult:
        """Make the version complete and verified in the cache, without holding it in use."""
        name, sha = self._names(ref)
        with self._sync_lock(name, sha):
            result = self._ensure(ref, on_progress)
        with contextlib.suppress(OSError):
            self._lock_path(name, sha, "lease").touch()  # the LRU clock
        return result

    def entries(self) -> list[CacheEntry]:
        """Every version on disk, complete or not, most recently used first."""
        out: list[CacheEntry] = []
        base = self.root / "datasets"
        if not base.is_dir():
            return out
        for name_dir in sorted(base.iterdir()):
            if not name_dir.is_dir() or name_dir.is_symlink():
                continue
            for vdir in sorted(name_dir.iterdir()):
                if not vdir.is_dir() or vdir.is_symlink():
                    continue
                lease = self.root / "locks" / name_dir.name / f"{vdir.name}.lease"
                last = lease.stat().st_mtime if lease.exists() else vdir.stat().st_mtime
                in_use = False
                if lease.exists():
                    fd = _lock_flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    in_use = fd is None
                    if fd is not None:
                        os.close(fd)
                marker = self._read_marker(vdir)
                size = int(marker["bytes"]) if marker else _du(vdir)
                out.append(CacheEntry(name_dir.name, vdir.name, vdir, size, marker is not None, last, in_use))
        out.sort(key=lambda e: e.last_used, reverse=True)
        return out

    def evict(self, need_bytes: int = 0, *, keep: tuple[str, str] | None = None) -> int:
        """Remove least recently used versions not in use until ``need_bytes`` more fit the budget.

        Returns:
            The bytes freed.

        Raises:
            HostError: (transient) the budget cannot be met because the rest is in use.
        """
        self._prepare_root()
        freed = 0
        with FileLock(str(self.root / "locks" / "evict.lock"), timeout=self.cfg.lock_timeout_s):
            if self.cfg.budget_bytes <= 0:  # no budget: never evict
                return 0
            entries = self.entries()
            used = sum(e.bytes for e in entries)
            if used + need_bytes <= self.cfg.budget_bytes:
                return 0
            for e in sorted(entries, key=lambda e: e.last_used):
                if used + need_bytes <= self.cfg.budget_bytes:
                    break
                if keep == (e.name, e.manifest_sha256):
                    continue
                n = self._evict_one(e)
                used -= n
                freed += n
            if used + need_bytes > self.cfg.budget_bytes:
                raise HostError(
                    f"The node cache cannot fit {need_bytes} more bytes under its budget of "
                    f"{self.cfg.budget_bytes} bytes: {used} bytes are in use by running work. Raise "
                    "HYPERBENCH_CACHE_BUDGET_BYTES or wait for the runs on this host to finish.",
                    permanent=False,
                )
        return freed

    def cleanup_stale(self) -> int:
        """Remove staging dirs (``*.part`` files) left by killed syncs. Returns how many."""
        removed = 0
        staging = self.root / "staging"
        if not staging.is_dir():
            return 0
        for d in staging.iterdir():
            name, _, sha = d.name.rpartition("-")
            if not _SAFE_NAME.match(name) or not _SHA256_HEX.match(sha):
                continue
            lock = FileLock(str(self._lock_path(name, sha, "sync")))
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                continue  # a live sync owns it
            try:
                shutil.rmtree(d, ignore_errors=True)
                removed += 1
            finally:
                lock.release()
        return removed

    # -- locking

    @contextlib.contextmanager
    def _sync_lock(self, name: str, sha: str) -> Iterator[None]:
        self._prepare_root()
        lock = FileLock(str(self._lock_path(name, sha, "sync")))
        try:
            lock.acquire(timeout=self.cfg.lock_timeout_s, poll_interval=0.05)
        except LockTimeout as e:
            raise HostError(
                f"Dataset {name}: another process has been syncing it for over "
                f"{self.cfg.lock_timeout_s:.0f}s on this host; try again later.",
                permanent=False,
            ) from e
        try:
            yield
        finally:
            lock.release()

    def _evict_one(self, e: CacheEntry) -> int:
        lock = FileLock(str(self._lock_path(e.name, e.manifest_sha256, "sync")))
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            return 0  # being synced or checked right now: in use
        try:
            lease = self._lock_path(e.name, e.manifest_sha256, "lease")
            fd = _lock_flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                return 0  # a running shard holds it
            try:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(e.path / MARKER)  # unsealed first: a crash mid-removal leaves no usable husk
                shutil.rmtree(e.path, ignore_errors=True)
                shutil.rmtree(self._staging(e.name, e.manifest_sha256), ignore_errors=True)
                logger.info("node cache: evicted %s@%s (%d bytes)", e.name, e.manifest_sha256[:12], e.bytes)
                return e.bytes
            finally:
                os.close(fd)
        finally:
            lock.release()

    # -- the sync itself (caller holds the sync lock)

    def _read_marker(self, vdir: Path) -> dict[str, Any] | None:
        try:
            data = json.loads((vdir / MARKER).read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "sealed_ctime_ns" in data else None

    def _ensure(self, ref: contract.DatasetRef, on_progress: ProgressFn | None) -> SyncResult:
        started = time.monotonic()
        name, sha = self._names(ref)
        vdir = self.version_dir(name, sha)
        repaired = 0
        marker = self._read_marker(vdir)
        if marker is not None:
            bad = self._check_sealed(vdir, sha, marker, on_progress)
            if bad is None:
                return SyncResult(
                    vdir,
                    int(marker["files"]),
                    int(marker["bytes"]),
                    0,
                    0,
                    0,
                    0,
                    time.monotonic() - started,
                    True,
                )
            repaired = bad
            logger.warning("node cache: %s@%s failed its check (%d files); re-syncing", name, sha[:12], bad)
        return self._sync(ref, vdir, started, repaired, on_progress)

    def _check_sealed(
        self, vdir: Path, sha: str, marker: dict[str, Any], on_progress: ProgressFn | None
    ) -> int | None:
        """None when the sealed version is intact, else how many files were removed as damaged.

        A damaged version is unsealed first (marker removed), so it can never be used half-repaired.
        """
        sealed = int(marker["sealed_ctime_ns"])
        # Sealed before the last boot: a power loss may have lost data the ctimes do not
        # show, so every file is checked by content once (refetched when it has no sha256).
        rebooted = marker.get("boot_id") != _boot_id()
        full = self.cfg.verify == "full" or rebooted
        bad: list[str] = []
        manifest_ok = True
        for fixed in (MANIFEST, DATASET_JSON):
            try:
                st = os.lstat(vdir / fixed)
                if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > sealed:
                    bad.append(str(vdir / fixed))
            except FileNotFoundError:
                bad.append(str(vdir / fixed))
        if str(vdir / MANIFEST) in bad:
            manifest_ok = False
        files = 0
        if manifest_ok:
            digest = hashlib.sha256()
            paths = _Paths(vdir)
            try:
                for e in _iter_entries(vdir / MANIFEST, paths, digest):
                    files += 1
                    try:
                        st = os.lstat(e.full)
                    except FileNotFoundError:
                        bad.append(e.full)
                        continue
                    if stat.S_ISLNK(st.st_mode):
                        raise HostError(f"{e.full} in the node cache is a symlink; refused")
                    if (
                        not stat.S_ISREG(st.st_mode)
                        or st.st_ctime_ns > sealed
                        or (e.size is not None and st.st_size != e.size)
                        or (full and e.sha256 and _hash_file(e.full, "sha256") != e.sha256)
                        or (rebooted and not e.sha256)
                    ):
                        bad.append(e.full)
            except HostError:
                raise
            if digest.hexdigest() != sha:
                bad.append(str(vdir / MANIFEST))
        if not bad and rebooted:
            marker["boot_id"] = _boot_id()
            tmp = vdir / (MARKER + ".part")
            tmp.write_text(json.dumps(marker), encoding="utf-8")
            os.replace(tmp, vdir / MARKER)
        if not bad:
            if on_progress:
                b = int(marker["bytes"])
                on_progress(SyncProgress("done", files, files, b, b, 0.0))
            return None
        os.unlink(vdir / MARKER)
        for p in bad:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        return len(bad)

    def _sync(
        self,
        ref: contract.DatasetRef,
        vdir: Path,
        started: float,
        repaired: int,
        on_progress: ProgressFn | None,
    ) -> SyncResult:
        name, sha = self._names(ref)
        bucket, prefix = parse_s3_uri(ref["uri"], self.s3.buckets)
        staging = self._staging(name, sha)
        shutil.rmtree(staging, ignore_errors=True)  # *.part files of a killed sync
        self.cleanup_stale()
        staging.mkdir(parents=True)
        try:
            return asyncio.run(
                self._sync_async(ref, bucket, prefix, vdir, staging, started, repaired, on_progress)
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def _sync_async(
        self,
        ref: contract.DatasetRef,
        bucket: str,
        prefix: str,
        vdir: Path,
        staging: Path,
        started: float,
        repaired: int,
        on_progress: ProgressFn | None,
    ) -> SyncResult:
        import aiohttp  # the web side imports this module's helpers without needing aiohttp

        name, sha = self._names(ref)
        conc = max(1, self.s3.concurrency)
        connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.s3.connect_timeout_s, sock_read=self.s3.read_timeout_s
        )
        async with aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            read_bufsize=_CHUNK,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        ) as session:
            fetcher = _Fetcher(self, session, bucket, prefix, staging)
            vdir.mkdir(parents=True, exist_ok=True)
            if vdir.is_symlink():
                raise HostError(f"{vdir} is a symlink; the node cache refuses symlinks.")
            vdir.chmod(0o755)
            # 1. the manifest, checked against the run spec before it is believed
            manifest = vdir / MANIFEST
            if not (manifest.is_file() and not manifest.is_symlink() and _sha256_path(manifest) == sha):
                part = await fetcher.fetch(MANIFEST, None, None, expect_sha=sha, what="the manifest")
                files_total, declared = _scan(Path(part), vdir)
                os.replace(part, manifest)
            else:
                files_total, declared = _scan(manifest, vdir)
            if not (vdir / DATASET_JSON).is_file() or (vdir / DATASET_JSON).is_symlink():
                part = await fetcher.fetch(DATASET_JSON, None, None, what=DATASET_JSON)
                os.replace(part, vdir / DATASET_JSON)
            # 2. room for it
            have = _du(vdir)
            need = max(0, declared - have)
            self.evict(need, keep=(name, sha))
            free = shutil.disk_usage(vdir).free
            if need > free:
                raise HostError(
                    f"The node cache's disk has {free} bytes free and dataset {name} needs {need} more; "
                    "free space or move HYPERBENCH_CACHE_DIR.",
                    permanent=True,
                )
            # 3. the objects
            donor = self._donor(name, sha)
            progress = _Progress(on_progress, files_total, declared)
            await fetcher.fetch_all(manifest, vdir, donor, progress)
            # 4. seal
            sealed_files, total_bytes = self._seal(vdir, sha)
            progress.finish()
        return SyncResult(
            vdir,
            sealed_files,
            total_bytes,
            fetcher.fetched_files,
            fetcher.fetched_bytes,
            fetcher.reused_files,
            repaired,
            time.monotonic() - started,
            False,
        )

    def _donor(self, name: str, sha: str) -> tuple[Path, int] | None:
        """The most recently used sealed version of the same dataset: unchanged files are copied from it."""
        best: tuple[float, Path, int] | None = None
        base = self.root / "datasets" / name
        for vdir in base.iterdir():
            if vdir.name == sha or vdir.is_symlink() or not vdir.is_dir():
                continue
            marker = self._read_marker(vdir)
            if marker is None:
                continue
            lease = self.root / "locks" / name / f"{vdir.name}.lease"
            last = lease.stat().st_mtime if lease.exists() else 0.0
            if best is None or last > best[0]:
                best = (last, vdir, int(marker["sealed_ctime_ns"]))
        return (best[1], best[2]) if best else None

    def _seal(self, vdir: Path, sha: str) -> tuple[int, int]:
        """Check every file once more, then write the marker after the clock passed their ctimes."""
        newest = 0
        files = 0
        total = 0
        digest = hashlib.sha256()
        paths = _Paths(vdir)
        for fixed in (MANIFEST, DATASET_JSON):
            st = os.lstat(vdir / fixed)
            newest = max(newest, st.st_ctime_ns)
            total += st.st_size
        for e in _iter_entries(vdir / MANIFEST, paths, digest):
            st = os.lstat(e.full)
            if not stat.S_ISREG(st.st_mode) or (e.size is not None and st.st_size != e.size):
                raise HostError(f"{e.image}: not complete after the sync; it is fetched again next time.")
            files += 1
            total += st.st_size
            newest = max(newest, st.st_ctime_ns)
        if digest.hexdigest() != sha:
            raise HostError("The cached manifest changed during the sync; it is fetched again next time.")
        try:
            # No fsync per file (nor a global sync, which would also flush every other
            # writer's dirty pages): the marker records the boot, and a version sealed
            # before a reboot is fully re-verified once (see _check_sealed).
            payload = {
                "boot_id": _boot_id(),
                "manifest_sha256": sha,
                "files": files,
                "bytes": total,
                "sealed_ctime_ns": newest,
                "sealed_at": time.time(),
            }
            tmp = vdir / (MARKER + ".part")
            # The marker must postdate every sealed ctime, or a write in the same clock tick
            # (the kernel stamps ctimes from a coarse clock) would go unseen.
            for _ in range(1000):
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(payload, f)
                    f.flush()
                    os.fsync(f.fileno())
                    if os.fstat(f.fileno()).st_ctime_ns > newest:
                        break
                time.sleep(0.002)
            os.replace(tmp, vdir / MARKER)
            dfd = os.open(vdir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(vdir, e) from e
            raise
        return files, total


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _sha256_path(path: Path) -> str:
    return _hash_file(str(path), "sha256")


def _du(path: Path) -> int:
    total = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for d in it:
                    if d.is_dir(follow_symlinks=False):
                        stack.append(d.path)
                    elif d.is_file(follow_symlinks=False):
                        total += d.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return total


def _scan(manifest: Path, vdir: Path) -> tuple[int, int]:
    """(files, declared bytes); refuses the whole version, before any fetch, if one image path is hostile."""
    problems: list[str] = []
    count = files = declared = 0
    paths = _Paths(vdir)
    with open(manifest, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                row = json.loads(raw)
                image = row.get("image") if isinstance(row, dict) else None
                paths.local(image)  # type: ignore[arg-type]
                files += 1
                size = row.get("size")
                if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                    declared += size
            except (ValueError, HostError) as e:
                count += 1
                if len(problems) < _MAX_LISTED_PROBLEMS:
                    problems.append(f"line {lineno}: {e}")
    if count:
        more = f" (and {count - len(problems)} more)" if count > len(problems) else ""
        raise HostError(
            f"The manifest names files this host refuses to write: {'; '.join(problems)}{more}. "
            "Fix the manifest and register it as a new version."
        )
    return files, declared


class _Progress:
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
        try:
            self.fn(
                SyncProgress(
                    phase,
                    self.files_done,
                    self.files_total,
                    self.bytes_done,
                    self.bytes_total,
                    self.fetched_bytes / elapsed,
                    self.fetched_files,
                    self.fetched_bytes,
                )
            )
        except Exception:  # noqa: BLE001 - a progress sink must never break a sync
            logger.warning("node cache: the progress callback failed", exc_info=True)

    def finish(self) -> None:
        self._emit("done")


class _Fetcher:
    """Concurrent verified GETs into ``.part`` files, renamed into the version dir."""

    def __init__(self, cache: NodeCache, session: Any, bucket: str, prefix: str, staging: Path) -> None:
        self.cache = cache
        self.s3 = cache.s3
        self.session = session
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging
        self._n = itertools.count(1)  # next() is atomic: parts are also named from threads
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.reused_files = 0
        endpoint = self.s3.endpoint_url or f"https://s3.{self.s3.region}.amazonaws.com"
        parsed = urlparse(endpoint)
        self.base = f"{parsed.scheme}://{parsed.netloc}"
        self.host = parsed.netloc
        self.base_path = parsed.path.rstrip("/")

    def _part(self) -> str:
        return str(self.staging / f"{next(self._n)}.part")

    async def fetch(
        self,
        rel: str,
        size: int | None,
        sha256: str | None,
        *,
        expect_sha: str | None = None,
        what: str = "",
    ) -> str:
        """GET ``prefix + rel`` into a verified ``.part``; returns its path."""
        import aiohttp
        from yarl import URL

        key = self.prefix + rel
        path = f"{self.base_path}/{quote(self.bucket, safe='')}/{quote(key, safe='/~')}"
        url = URL(self.base + path, encoded=True)
        sha = expect_sha or sha256
        label = what or f"s3://{self.bucket}/{key}"
        last = ""
        for attempt in range(self.s3.max_attempts):
            if attempt:
                await asyncio.sleep(_backoff(self.s3, attempt))
            part = self._part()
            try:
                return await self._get_once(url, path, part, size, sha, label)
            except _Transient as e:
                last = str(e)
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            logger.info("node cache: %s attempt %d failed: %s", label, attempt + 1, last)
        raise HostError(
            f"S3 kept failing for {label} after {self.s3.max_attempts} attempts (last: {last}); "
            "the dataset was not mounted. Check the S3 endpoint's health and retry the run.",
            permanent=False,
        )

    async def _get_once(
        self, url: Any, path: str, part: str, size: int | None, sha: str | None, label: str
    ) -> str:
        if size is not None and size >= 2 * _RANGE_PART:
            return await self._get_ranges(url, path, part, size, sha, label)
        headers = self.cache._signer.headers(self.host, path)
        async with self.session.get(url, headers=headers) as resp:
            if resp.status != 200:
                body = await resp.content.read(4096)
                code = _error_code(body)
                if resp.status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                    raise _Transient(f"HTTP {resp.status} {code}".strip())
                if resp.status == 404:
                    raise HostError(f"{label} does not exist in S3 (HTTP 404 {code}); dataset incomplete.")
                raise HostError(f"S3 refused {label}: HTTP {resp.status} {code}; check the host's S3 keys.")
            etag = resp.headers.get("ETag", "").strip('"')
            length = resp.content_length
            if size is not None and length is not None and length != size:
                raise HostError(f"{label} has {length} bytes in S3, the manifest says {size}.")
            h = hashlib.sha256() if sha else hashlib.md5(usedforsecurity=False)
            got = 0
            try:
                fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise _disk_full(part, e) from e
                raise
            try:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    h.update(chunk)
                    got += len(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                os.fchmod(fd, 0o444)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _disk_full(part, e) from e
                raise
            finally:
                os.close(fd)
        if length is not None and got != length:
            raise _Transient(f"short body ({got} of {length} bytes)")
        if size is not None and got != size:
            raise _Transient(f"got {got} bytes, the manifest says {size}")
        digest = h.hexdigest()
        if sha:
            if digest != sha:
                raise _Transient(f"sha256 {digest[:12]} does not match {sha[:12]}")
        elif _MD5_ETAG.match(etag) and digest != etag:
            raise _Transient(f"md5 {digest} does not match the ETag {etag}")
        return part

    async def _get_ranges(
        self, url: Any, path: str, part: str, size: int, sha: str | None, label: str
    ) -> str:
        """A large object: ranged GETs in parallel, written in place, hashed in order.

        One stream per object caps a big file at what one connection and one core give;
        parts let the server and the client use every core. Each part is hashed from the
        page cache, in a thread, as soon as the parts before it have landed.
        """
        loop = asyncio.get_running_loop()
        etags: set[str] = set()
        starts = range(0, size, _RANGE_PART)
        landed = [False] * len(starts)
        hashed = 0
        h = hashlib.sha256() if sha else hashlib.md5(usedforsecurity=False)
        hash_lock = asyncio.Lock()

        async def hash_ready() -> None:
            # Hash the parts that have landed, in order, while later parts still download.
            nonlocal hashed
            async with hash_lock:
                while hashed < len(starts) and landed[hashed]:
                    lo = starts[hashed]
                    await loop.run_in_executor(None, _hash_range, part, h, lo, min(size, lo + _RANGE_PART))
                    hashed += 1

        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise _disk_full(part, e) from e
            raise

        async def one(index: int, start: int, end: int) -> None:
            headers = self.cache._signer.headers(self.host, path)
            headers["Range"] = f"bytes={start}-{end}"
            async with self.session.get(url, headers=headers) as resp:
                if resp.status != 206:
                    body = await resp.content.read(4096)
                    code = _error_code(body)
                    if resp.status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES:
                        raise _Transient(f"HTTP {resp.status} {code}".strip())
                    if resp.status == 404:
                        raise HostError(f"{label} does not exist in S3 (HTTP 404); dataset incomplete.")
                    raise HostError(f"S3 answered a ranged GET of {label} with HTTP {resp.status} {code}.")
                etags.add(resp.headers.get("ETag", "").strip('"'))
                pos = start
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    if pos + len(chunk) > end + 1:
                        raise _Transient("a ranged GET returned more bytes than asked")
                    _pwrite_all(fd, chunk, pos)
                    pos += len(chunk)
                if pos != end + 1:
                    raise _Transient(f"short ranged body ({pos - start} of {end + 1 - start} bytes)")
            landed[index] = True
            await hash_ready()

        try:
            results = await asyncio.gather(
                *(one(i, s, min(size, s + _RANGE_PART) - 1) for i, s in enumerate(starts)),
                return_exceptions=True,
            )
            os.fchmod(fd, 0o444)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(part, e) from e
            raise
        finally:
            os.close(fd)
        for r in results:
            if isinstance(r, OSError) and r.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(part, r) from r
        for r in results:
            if isinstance(r, HostError):
                raise r
        for r in results:
            if isinstance(r, BaseException):
                raise r
        if len(etags) != 1:
            raise _Transient("the object changed during a ranged download (ETags differ)")
        etag = etags.pop()
        if os.stat(part).st_size != size:
            raise _Transient(f"got {os.stat(part).st_size} bytes, the manifest says {size}")
        await hash_ready()
        if hashed != len(starts):
            raise _Transient("not every part of a ranged download landed")
        digest = h.hexdigest()
        if sha:
            if digest != sha:
                raise _Transient(f"sha256 {digest[:12]} does not match {sha[:12]}")
        elif _MD5_ETAG.match(etag) and digest != etag:
            raise _Transient(f"md5 {digest} does not match the ETag {etag}")
        return part

    async def fetch_all(
        self, manifest: Path, vdir: Path, donor: tuple[Path, int] | None, progress: _Progress
    ) -> None:
        paths = _Paths(vdir)
        donor_paths = _Paths(donor[0]) if donor else None
        conc = max(1, self.s3.concurrency)
        queue: asyncio.Queue[_Entry | None] = asyncio.Queue(maxsize=conc * 4)
        in_flight: set[str] = set()
        errors: list[BaseException] = []

        async def worker() -> None:
            while True:
                e = await queue.get()
                if e is None:
                    return
                if errors:
                    continue
                try:
                    while e.full in in_flight:  # the same image on two lines: fetch it once
                        await asyncio.sleep(0.01)
                    if os.path.isfile(e.full) and not os.path.islink(e.full):
                        progress.add(os.lstat(e.full).st_size, False)
                        continue
                    in_flight.add(e.full)
                    try:
                        part = await self.fetch(e.image, e.size, e.sha256)
                        n = os.lstat(part).st_size
                        paths.ensure_parent(e.full)
                        paths.local(e.image)  # re-check after the directories exist
                        os.replace(part, e.full)
                        self.fetched_files += 1
                        self.fetched_bytes += n
                        progress.add(n, True)
                    finally:
                        in_flight.discard(e.full)
                except BaseException as ex:  # noqa: BLE001 - handed to the caller below
                    errors.append(ex)

        tasks = [asyncio.create_task(worker()) for _ in range(conc)]
        try:
            for e in _iter_entries(manifest, paths):
                if errors:
                    break
                # Local work first, in this loop: measured faster here than handing it to
                # threads (2 cores, shared with the S3 server and the downloads).
                if donor_paths is not None or os.path.lexists(e.full):
                    done = self._local(e, donor, donor_paths, paths)
                    if done is not None:
                        self.reused_files += done[0]
                        progress.add(done[1], False)
                        continue
                await queue.put(e)
        finally:
            for _ in tasks:
                await queue.put(None)
            await asyncio.gather(*tasks, return_exceptions=True)
        if errors:
            raise errors[0]

    def _local(
        self, e: _Entry, donor: tuple[Path, int] | None, donor_paths: _Paths | None, paths: _Paths
    ) -> tuple[int, int] | None:
        """(1 if copied from the older version else 0, size) when no fetch is needed; else None."""
        if self._keep_existing(e):
            return 0, os.lstat(e.full).st_size
        if donor_paths is not None and self._copy_from_donor(e, donor, donor_paths, paths):
            return 1, os.lstat(e.full).st_size
        return None

    def _keep_existing(self, e: _Entry) -> bool:
        """A file already at its final name was verified before its rename (a resumed sync)."""
        try:
            st = os.lstat(e.full)
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            raise HostError(f"{e.full} in the node cache is a symlink; refused")
        if not stat.S_ISREG(st.st_mode) or (e.size is not None and st.st_size != e.size):
            os.unlink(e.full)
            return False
        if e.sha256 and _hash_file(e.full, "sha256") != e.sha256:
            os.unlink(e.full)
            return False
        return True

    def _copy_from_donor(
        self, e: _Entry, donor: tuple[Path, int] | None, donor_paths: _Paths, paths: _Paths
    ) -> bool:
        """Copy an unchanged file (same path and sha256) from an older sealed version of the dataset."""
        if donor is None or not e.sha256:
            return False
        try:
            src = donor_paths.local(e.image)
            st = os.lstat(src)
        except (HostError, FileNotFoundError):
            return False
        if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > donor[1]:
            return False
        if e.size is not None and st.st_size != e.size:
            return False
        part = self._part()
        h = hashlib.sha256()
        try:
            with open(src, "rb", buffering=0) as fin, open(part, "xb", buffering=0) as fout:
                while chunk := fin.read(_CHUNK):
                    h.update(chunk)
                # an in-kernel copy: the bytes are not copied through user space a second time
                left, off = st.st_size, 0
                while left > 0:
                    n = os.copy_file_range(fin.fileno(), fout.fileno(), left, off, off)
                    if n == 0:
                        break
                    left -= n
                    off += n
                if off != st.st_size:
                    raise OSError(errno.EIO, "short copy")
                os.fchmod(fout.fileno(), 0o444)
        except OSError as ex:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            if ex.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(part, ex) from ex
            return False
        if h.hexdigest() != e.sha256:
            os.unlink(part)
            return False
        paths.ensure_parent(e.full)
        os.replace(part, e.full)
        return True
