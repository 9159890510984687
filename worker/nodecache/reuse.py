"""Files that need no fetch: those already at their final name, and those an older version has."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from worker.errors import HostError
from worker.nodecache.layout import Paths, disk_full
from worker.nodecache.seal import Entry, hash_file
from worker.nodecache.settings import CHUNK


class Reuse:
    """Decides, per manifest entry, whether a local file can stand in for a fetch."""

    def __init__(self, paths: Paths, donor: tuple[Path, int] | None, new_part: Callable[[], str]) -> None:
        self.paths = paths
        self.donor = donor
        self.donor_paths = Paths(donor[0]) if donor else None
        self.new_part = new_part

    def wanted(self, e: Entry) -> bool:
        """Whether :meth:`local` may find something for ``e`` (cheap: no syscall without a donor)."""
        return self.donor_paths is not None or os.path.lexists(e.full)

    def local(self, e: Entry) -> tuple[int, int] | None:
        """(1 if copied from the older version else 0, size) when no fetch is needed; else None."""
        if keep_existing(e):
            return 0, os.lstat(e.full).st_size
        if self.donor_paths is not None and self._copy_from_donor(e):
            return 1, os.lstat(e.full).st_size
        return None

    def _donor_source(self, e: Entry) -> tuple[str, int] | None:
        if self.donor is None or self.donor_paths is None or not e.sha256:
            return None
        try:
            src = self.donor_paths.local(e.image)
            st = os.lstat(src)
        except (HostError, FileNotFoundError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_ctime_ns > self.donor[1]:
            return None
        if e.size is not None and st.st_size != e.size:
            return None
        return src, st.st_size

    def _copy_from_donor(self, e: Entry) -> bool:
        """Copy an unchanged file (same path and sha256) from an older sealed version of the dataset."""
        found = self._donor_source(e)
        if found is None:
            return False
        src, size = found
        part = self.new_part()
        try:
            digest = _copy_hashed(src, part, size)
        except OSError as ex:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            if ex.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_full(part, ex) from ex
            return False
        if digest != e.sha256:
            os.unlink(part)
            return False
        self.paths.ensure_parent(e.full)
        os.replace(part, e.full)
        return True


def keep_existing(e: Entry) -> bool:
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
    if e.sha256 and hash_file(e.full, "sha256") != e.sha256:
        os.unlink(e.full)
        return False
    return True


def _copy_hashed(src: str, part: str, size: int) -> str:
    """Hash ``src`` and copy it in the kernel to a new read-only ``part``; returns the sha256."""
    h = hashlib.sha256()
    with open(src, "rb", buffering=0) as fin, open(part, "xb", buffering=0) as fout:
        while chunk := fin.read(CHUNK):
            h.update(chunk)
        # an in-kernel copy: the bytes are not copied through user space a second time
        left, off = size, 0
        while left > 0:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), left, off, off)
            if n == 0:
                break
            left -= n
            off += n
        if off != size:
            raise OSError(errno.EIO, "short copy")
        os.fchmod(fout.fileno(), 0o444)
    return h.hexdigest()
