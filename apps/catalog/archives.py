"""Unpack an uploaded archive (zip, tar, tar.gz) into a new directory, refusing hostile ones.

Refused, with the member named: an absolute path, a ``..`` segment, a backslash or NUL in a
name, a drive letter; symbolic and hard links, devices, FIFOs and any other non-regular member;
encrypted zip members; two members of the same name; more members than ``max_files``; more bytes
in all than ``max_bytes`` (counted as they are written, never trusting the declared sizes); a zip
member that inflates more than ``max_ratio`` times its compressed size, and an archive that
inflates more than ``max_ratio`` times its own size (a gzip bomb). A separate ``quota_bytes``
(the user's storage left) refuses with :class:`OverQuota`. On any refusal the directory is
removed: nothing is left on disk.
"""

from __future__ import annotations

import re
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

_CHUNK = 1024 * 1024
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


class ArchiveRefused(Exception):
    """The archive is refused; the message names the member and the rule."""


class OverQuota(ArchiveRefused):
    """Unpacked, the archive would put the user over their storage quota."""


def is_archive(filename: str) -> bool:
    return filename.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class UnpackLimits:
    max_bytes: int
    max_files: int
    max_ratio: int
    #: What the user may still store (None: no quota).
    quota_bytes: int | None = None


def member_problem(name: str) -> str | None:
    """Why an archive member's name cannot be unpacked, or None."""
    if "\x00" in name:
        return "has a NUL character in its name"
    if "\\" in name:
        return "has a backslash in its name (use '/')"
    if name.startswith("/"):
        return "is an absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "names a drive"
    if ".." in PurePosixPath(name).parts:
        return "has a '..' segment (a path outside the upload)"
    if not PurePosixPath(name).parts:
        return "has an empty name"
    return None


class _Unpacker:
    def __init__(self, archive: Path, dest: Path, limits: UnpackLimits) -> None:
        self.dest, self.limits = dest, limits
        self.archive_size = max(archive.stat().st_size, 1)
        self.total = 0
        self.files = 0

    def _count_member(self, name: str) -> None:
        self.files += 1
        if self.files > self.limits.max_files:
            raise ArchiveRefused(
                f"the archive has more than {self.limits.max_files} members "
                "(HYPERBENCH_UPLOAD_MAX_FILES); refused."
            )

    def target(self, name: str) -> Path:
        problem = member_problem(name)
        if problem:
            raise ArchiveRefused(f"member {name!r} {problem}; refused.")
        path = self.dest.joinpath(*PurePosixPath(name).parts)
        if not path.resolve().is_relative_to(self.dest.resolve()):
            raise ArchiveRefused(f"member {name!r} leads outside the upload; refused.")
        return path

    def directory(self, name: str) -> None:
        self._count_member(name)
        self.target(name).mkdir(parents=True, exist_ok=True)

    def _add(self, n: int, name: str) -> None:
        self.total += n
        quota = self.limits.quota_bytes
        if quota is not None and self.total > quota:
            raise OverQuota(
                f"unpacked, the upload is over the {quota} bytes your storage quota leaves "
                f"(at member {name!r}); refused."
            )
        if self.total > self.limits.max_bytes:
            raise ArchiveRefused(
                f"unpacked, the archive is over {self.limits.max_bytes} bytes "
                f"(HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES) at member {name!r}; refused."
            )
        if self.total > self.limits.max_ratio * self.archive_size:
            raise ArchiveRefused(
                f"the archive inflates more than {self.limits.max_ratio} times its size at member "
                f"{name!r} (HYPERBENCH_UPLOAD_MAX_RATIO): refused as a decompression bomb."
            )

    def file(self, name: str, src: IO[bytes]) -> None:
        self._count_member(name)
        path = self.target(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            dst = open(path, "xb")  # noqa: SIM115 - closed below
        except FileExistsError:
            raise ArchiveRefused(f"member {name!r} appears twice in the archive; refused.") from None
        with dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                self._add(len(chunk), name)
                dst.write(chunk)


def _unzip(archive: Path, u: _Unpacker) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > u.limits.max_files:
            raise ArchiveRefused(
                f"the archive has {len(infos)} members, over {u.limits.max_files} "
                "(HYPERBENCH_UPLOAD_MAX_FILES); refused."
            )
        for info in infos:
            name = info.filename
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise ArchiveRefused(f"member {name!r} is a symbolic link; links are refused.")
            if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArchiveRefused(f"member {name!r} is not a regular file or folder; refused.")
            if info.flag_bits & 0x1:
                raise ArchiveRefused(f"member {name!r} is encrypted; refused.")
            if info.is_dir():
                u.directory(name)
                continue
            if info.file_size > u.limits.max_ratio * max(info.compress_size, 1):
                raise ArchiveRefused(
                    f"member {name!r} inflates {info.file_size} bytes from {info.compress_size} "
                    f"(over {u.limits.max_ratio} times, HYPERBENCH_UPLOAD_MAX_RATIO): refused as a "
                    "decompression bomb."
                )
            with zf.open(info) as src:
                u.file(name, src)


def _untar(archive: Path, u: _Unpacker) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            name = member.name
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise ArchiveRefused(f"member {name!r} is a {kind} link; links are refused.")
            if member.isdir():
                u.directory(name)
                continue
            if not member.isreg():
                raise ArchiveRefused(f"member {name!r} is a device, FIFO or other special file; refused.")
            src = tf.extractfile(member)
            if src is None:
                raise ArchiveRefused(f"member {name!r} cannot be read; refused.")
            with src:
                u.file(name, src)


def unpack(archive: Path, filename: str, dest: Path, limits: UnpackLimits) -> None:
    """Unpack ``archive`` (its type from ``filename``) into ``dest``, a directory to be created.

    Raises:
        ArchiveRefused: (or OverQuota) naming the member and the rule; ``dest`` is removed.
    """
    dest.mkdir(parents=True)
    u = _Unpacker(archive, dest, limits)
    try:
        if filename.lower().endswith(".zip"):
            if not zipfile.is_zipfile(archive):
                raise ArchiveRefused(f"{filename} is not a zip archive.")
            _unzip(archive, u)
        else:
            _untar(archive, u)
    except ArchiveRefused:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError, NotImplementedError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRefused(f"{filename} cannot be unpacked: {e.__class__.__name__}: {e}") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    if u.files == 0:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveRefused(f"{filename} is empty.")
