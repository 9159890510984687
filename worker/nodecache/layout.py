"""The cache's directory tree, its locks and its LRU eviction.

::

    <root>/datasets/<name>/<manifest-sha>/      the version: dataset.json, manifest.jsonl, images, .complete
    <root>/staging/<name>-<manifest-sha>/      *.part files of the sync in progress (removed at the end)
    <root>/locks/<name>/<manifest-sha>.sync    one syncing process per version and node (filelock)
    <root>/locks/<name>/<manifest-sha>.lease   shared flock held by each run using it; mtime = last use
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout

from worker import contract
from worker.errors import HostError
from worker.manifest import check_image_path
from worker.nodecache.settings import MARKER, SAFE_NAME, SHA256_HEX, CacheEntry, CacheSettings

logger = logging.getLogger(__name__)

_DIR_CACHE_SIZE = 4096


def lock_flock(path: Path, mode: int) -> int | None:
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


def disk_full(where: Path | str, e: OSError) -> HostError:
    return HostError(
        f"The node cache's disk is full ({where}: {e.strerror}); free space, lower "
        "HYPERBENCH_CACHE_BUDGET_BYTES below the disk's size, or move HYPERBENCH_CACHE_DIR.",
        permanent=True,
    )


def du(path: Path) -> int:
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


def read_marker(vdir: Path, name: str = MARKER) -> dict[str, Any] | None:
    try:
        data = json.loads((vdir / name).read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "sealed_ctime_ns" in data else None


class Paths:
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
            ok = self._parent_ok(parent)
            if len(self._dirs) >= _DIR_CACHE_SIZE:
                self._dirs.clear()
            self._dirs[parent] = ok
        if not ok:
            raise HostError(f"image {image!r}: a directory on its path in the cache is a symlink; refused")
        return full

    def _parent_ok(self, parent: str) -> bool:
        # realpath follows any symlinked directory: a link planted in the cache that
        # points elsewhere makes the parent resolve outside the root.
        real_parent = os.path.realpath(parent)
        inside = real_parent == self.real_root or real_parent.startswith(self.real_root + os.sep)
        return inside and real_parent == parent

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


class Layout:
    """The cache's directory tree under ``cfg.root``: versions, staging, locks, LRU eviction."""

    def __init__(self, cfg: CacheSettings) -> None:
        self.cfg = cfg
        self.root = Path(cfg.root)

    # -- names and paths

    @staticmethod
    def names(ref: contract.DatasetRef) -> tuple[str, str]:
        name, sha = ref["name"], ref["manifest_sha256"]
        if not SAFE_NAME.match(name):
            raise HostError(f"Dataset name {name!r} cannot name a cache directory.")
        if not SHA256_HEX.match(sha):
            raise HostError(f"Dataset {name}: manifest_sha256 {sha!r} is not a sha256.")
        return name, sha

    def version_dir(self, name: str, sha: str) -> Path:
        return self.root / "datasets" / name / sha

    def staging(self, name: str, sha: str) -> Path:
        return self.root / "staging" / f"{name}-{sha}"

    def lock_path(self, name: str, sha: str, kind: str) -> Path:
        d = self.root / "locks" / name
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{sha}.{kind}"

    def prepare_root(self) -> None:
        for sub in ("datasets", "staging", "locks"):
            p = self.root / sub
            p.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                raise HostError(f"{p} is a symlink; the node cache refuses symlinks.")
        self.root.chmod(0o755)
        (self.root / "datasets").chmod(0o755)

    # -- locks

    @contextlib.contextmanager
    def sync_lock(self, name: str, sha: str) -> Iterator[None]:
        """One syncing (or checking) process per version and node."""
        self.prepare_root()
        lock = FileLock(str(self.lock_path(name, sha, "sync")))
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

    def hold_lease(self, name: str, sha: str) -> int:
        """A shared flock on the version's lease file (the caller closes the fd); touches the LRU clock."""
        fd = lock_flock(self.lock_path(name, sha, "lease"), fcntl.LOCK_SH)
        assert fd is not None
        os.utime(fd)
        return fd

    def touch_lease(self, name: str, sha: str) -> None:
        with contextlib.suppress(OSError):
            self.lock_path(name, sha, "lease").touch()  # the LRU clock

    # -- what is on disk

    def _last_used(self, name: str, vdir: Path, default: float | None = None) -> float:
        lease = self.root / "locks" / name / f"{vdir.name}.lease"
        if lease.exists():
            return lease.stat().st_mtime
        return vdir.stat().st_mtime if default is None else default

    def _in_use(self, name: str, vdir: Path) -> bool:
        lease = self.root / "locks" / name / f"{vdir.name}.lease"
        if not lease.exists():
            return False
        fd = lock_flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is None:
            return True
        os.close(fd)
        return False

    def _versions(self, name_dir: Path) -> Iterator[Path]:
        for vdir in sorted(name_dir.iterdir()):
            if vdir.is_dir() and not vdir.is_symlink():
                yield vdir

    def entries(self) -> list[CacheEntry]:
        """Every version on disk, complete or not, most recently used first."""
        out: list[CacheEntry] = []
        base = self.root / "datasets"
        if not base.is_dir():
            return out
        for name_dir in sorted(base.iterdir()):
            if not name_dir.is_dir() or name_dir.is_symlink():
                continue
            for vdir in self._versions(name_dir):
                name = name_dir.name
                last = self._last_used(name, vdir)
                in_use = self._in_use(name, vdir)
                marker = read_marker(vdir)
                size = int(marker["bytes"]) if marker else du(vdir)
                out.append(CacheEntry(name, vdir.name, vdir, size, marker is not None, last, in_use))
        out.sort(key=lambda e: e.last_used, reverse=True)
        return out

    def donor(self, name: str, sha: str) -> tuple[Path, int] | None:
        """The most recently used sealed version of the same dataset: unchanged files are copied from it."""
        best: tuple[float, Path, int] | None = None
        for vdir in self._versions(self.root / "datasets" / name):
            if vdir.name == sha:
                continue
            marker = read_marker(vdir)
            if marker is None:
                continue
            last = self._last_used(name, vdir, default=0.0)
            if best is None or last > best[0]:
                best = (last, vdir, int(marker["sealed_ctime_ns"]))
        return (best[1], best[2]) if best else None

    # -- eviction and clean-up

    def evict(self, need_bytes: int = 0, *, keep: tuple[str, str] | None = None) -> int:
        """Remove least recently used versions not in use until ``need_bytes`` more fit the budget.

        Returns:
            The bytes freed.

        Raises:
            HostError: (transient) the budget cannot be met because the rest is in use.
        """
        self.prepare_root()
        with FileLock(str(self.root / "locks" / "evict.lock"), timeout=self.cfg.lock_timeout_s):
            if self.cfg.budget_bytes <= 0:  # no budget: never evict
                return 0
            entries = self.entries()
            used = sum(e.bytes for e in entries)
            freed = 0
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

    def _evict_one(self, e: CacheEntry) -> int:
        lock = FileLock(str(self.lock_path(e.name, e.manifest_sha256, "sync")))
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            return 0  # being synced or checked right now: in use
        try:
            lease = self.lock_path(e.name, e.manifest_sha256, "lease")
            fd = lock_flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if fd is None:
                return 0  # a running shard holds it
            try:
                for marker in e.path.glob(MARKER + "*"):  # the whole version's and its subsets'
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(marker)  # unsealed first: a crash mid-removal leaves no usable husk
                shutil.rmtree(e.path, ignore_errors=True)
                shutil.rmtree(self.staging(e.name, e.manifest_sha256), ignore_errors=True)
                logger.info("node cache: evicted %s@%s (%d bytes)", e.name, e.manifest_sha256[:12], e.bytes)
                return e.bytes
            finally:
                os.close(fd)
        finally:
            lock.release()

    def cleanup_stale(self) -> int:
        """Remove staging dirs (``*.part`` files) left by killed syncs. Returns how many."""
        removed = 0
        staging = self.root / "staging"
        if not staging.is_dir():
            return 0
        for d in staging.iterdir():
            name, _, sha = d.name.rpartition("-")
            if not SAFE_NAME.match(name) or not SHA256_HEX.match(sha):
                continue
            lock = FileLock(str(self.lock_path(name, sha, "sync")))
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
