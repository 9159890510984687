"""The seal protocol: the manifest's entries, the ``.complete`` marker, and the cheap re-check.

The marker records ``sealed_ctime_ns``: the newest inode change time of any file of
the version when it was sealed, and it is only written once the clock has moved past
it. Any later write, truncate, chmod, rename or link of a cached file moves its ctime
past that, and ctime cannot be set back from user space (unlike mtime). So a later use
streams the manifest (hashing it again: the manifest decides what every other check
means) and ``lstat`` s each file: one syscall per file, no reads and no requests.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.errors import HostError
from worker.manifest import DATASET_JSON, MANIFEST
from worker.nodecache.layout import Paths, disk_full
from worker.nodecache.settings import CHUNK, MARKER, SHA256_HEX, Selection

_MAX_LISTED_PROBLEMS = 10


@dataclass
class Entry:
    lineno: int
    image: str
    full: str
    size: int | None
    sha256: str | None
    sample_id: str = ""

    def selected(self, select: Selection) -> bool:
        return select.wants(self.lineno - 1, self.sample_id)


def marker_name(select: Selection) -> str | None:
    """The seal marker of ``select``: ``.complete`` for the whole version, ``.complete.<key>`` for a part."""
    if select.whole:
        return MARKER
    return f"{MARKER}.{select.key}" if select.key else None


def iter_entries(manifest: Path, paths: Paths, hasher: Any = None) -> Iterator[Entry]:
    """Stream the manifest's entries; a bad line raises HostError naming it."""
    with open(manifest, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if hasher is not None:
                hasher.update(raw)
            yield _entry(lineno, raw, paths)


def _entry(lineno: int, raw: bytes, paths: Paths) -> Entry:
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
    if not isinstance(sha, str) or not SHA256_HEX.match(sha):
        sha = None
    return Entry(lineno, str(image), full, size, sha, str(row.get("id", "")))


def scan(manifest: Path, vdir: Path, select: Selection) -> tuple[int, int, int]:
    """(files, declared bytes, declared bytes not on disk yet) of the selected entries.

    Refuses the whole version, before any fetch, if one image path is hostile (selected or not).
    """
    problems: list[str] = []
    count = files = declared = missing = 0
    paths = Paths(vdir)
    with open(manifest, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                row = json.loads(raw)
                image = row.get("image") if isinstance(row, dict) else None
                full = paths.local(image)  # type: ignore[arg-type]
                if not select.wants(lineno - 1, str(row.get("id", ""))):
                    continue
                files += 1
                size = row.get("size")
                if isinstance(size, int) and not isinstance(size, bool) and size > 0:
                    declared += size
                    if not os.path.lexists(full):
                        missing += size
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
    return files, declared, missing


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def hash_file(path: str, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- the re-check of a sealed version ---------------------------------------------------


def _entry_bad(e: Entry, sealed: int, full: bool, rebooted: bool) -> bool:
    """True when the file of ``e`` is missing, changed since the seal, or (checked by content) wrong."""
    try:
        st = os.lstat(e.full)
    except FileNotFoundError:
        return True
    if stat.S_ISLNK(st.st_mode):
        raise HostError(f"{e.full} in the node cache is a symlink; refused")
    return bool(
        not stat.S_ISREG(st.st_mode)
        or st.st_ctime_ns > sealed
        or (e.size is not None and st.st_size != e.size)
        or (full and e.sha256 and hash_file(e.full, "sha256") != e.sha256)
        or (rebooted and not e.sha256)
    )


def _fixed_bad(vdir: Path, sealed: int) -> list[str]:
    bad: list[str] = []
    for fixed in (MANIFEST, DATASET_JSON):
        try:
            st = os.lstat(vdir / fixed)
            if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > sealed:
                bad.append(str(vdir / fixed))
        except FileNotFoundError:
            bad.append(str(vdir / fixed))
    return bad


def check_sealed(
    vdir: Path, sha: str, marker: dict[str, Any], verify: str, select: Selection
) -> tuple[int, list[str]]:
    """(files, damaged paths) of a sealed version or subset; an intact one has no damaged paths.

    Sealed before the last boot, a power loss may have lost data the ctimes do not show,
    so every file is then checked by content once (refetched when it has no sha256).
    """
    sealed = int(marker["sealed_ctime_ns"])
    rebooted = marker.get("boot_id") != boot_id()
    full = verify == "full" or rebooted
    bad = _fixed_bad(vdir, sealed)
    files = 0
    if str(vdir / MANIFEST) not in bad:
        digest = hashlib.sha256()
        for e in iter_entries(vdir / MANIFEST, Paths(vdir), digest):
            if not e.selected(select):
                continue
            files += 1
            if _entry_bad(e, sealed, full, rebooted):
                bad.append(e.full)
        if digest.hexdigest() != sha:
            bad.append(str(vdir / MANIFEST))
    name = marker_name(select)
    if not bad and rebooted and name:
        marker["boot_id"] = boot_id()
        tmp = vdir / (name + ".part")
        tmp.write_text(json.dumps(marker), encoding="utf-8")
        os.replace(tmp, vdir / name)
    return files, bad


def unseal(vdir: Path, bad: list[str], select: Selection) -> None:
    """Remove the marker first (never used half-repaired), then the damaged files."""
    name = marker_name(select)
    if name:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(vdir / name)
    for p in bad:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


# --- sealing ----------------------------------------------------------------------------


def _tally(vdir: Path, sha: str, select: Selection) -> tuple[int, int, int]:
    """(files, bytes, newest ctime) of a synced version; raises HostError when it is not complete."""
    newest = files = total = 0
    digest = hashlib.sha256()
    for fixed in (MANIFEST, DATASET_JSON):
        st = os.lstat(vdir / fixed)
        newest = max(newest, st.st_ctime_ns)
        total += st.st_size
    for e in iter_entries(vdir / MANIFEST, Paths(vdir), digest):
        if not e.selected(select):
            continue
        st = os.lstat(e.full)
        if not stat.S_ISREG(st.st_mode) or (e.size is not None and st.st_size != e.size):
            raise HostError(f"{e.image}: not complete after the sync; it is fetched again next time.")
        files += 1
        total += st.st_size
        newest = max(newest, st.st_ctime_ns)
    if digest.hexdigest() != sha:
        raise HostError("The cached manifest changed during the sync; it is fetched again next time.")
    return files, total, newest


def seal(vdir: Path, sha: str, select: Selection) -> tuple[int, int]:
    """Check every selected file once more, then write the marker after the clock passed their ctimes.

    A set of ids (a report's gallery) gets no marker: it is checked file by file at each use.
    """
    files, total, newest = _tally(vdir, sha, select)
    name = marker_name(select)
    if name is None:
        return files, total
    # No fsync per file (nor a global sync, which would also flush every other writer's
    # dirty pages): the marker records the boot, and a version sealed before a reboot is
    # fully re-verified once (see check_sealed).
    payload = {
        "boot_id": boot_id(),
        "manifest_sha256": sha,
        "files": files,
        "bytes": total,
        "sealed_ctime_ns": newest,
        "sealed_at": time.time(),
    }
    try:
        _write_marker(vdir, payload, newest, name)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(vdir, e) from e
        raise
    return files, total


def _write_marker(vdir: Path, payload: dict[str, Any], newest: int, name: str) -> None:
    tmp = vdir / (name + ".part")
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
    os.replace(tmp, vdir / name)
    dfd = os.open(vdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
