"""The artifact store: run outputs addressed by URI (``file://`` for now).

Writes are atomic (``.part`` + rename) so a reader never sees half a file, and
only paths under the configured artifact roots are ever written or read.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

from worker.errors import HostError


def uri_join(base: str, *parts: str) -> str:
    return base.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)


class FileStore:
    """``file://`` artifact store rooted in one of the allowed directories."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots

    def path_of(self, uri: str) -> Path:
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise HostError(f"Artifact URI {uri!r} is not supported on this host (only file:// for now).")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path == r or path.is_relative_to(r) for r in self.roots):
            raise HostError(
                f"Artifact URI {uri!r} is outside this host's artifact roots "
                f"({', '.join(map(str, self.roots))}); set HYPERBENCH_ARTIFACT_ROOTS on the worker."
            )
        return path

    def exists(self, uri: str) -> bool:
        return self.path_of(uri).is_file()

    def put_file(self, local: Path, uri: str) -> str:
        dest = self.path_of(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + f".{os.getpid()}.part")
        shutil.copyfile(local, part)
        with open(part, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(part, dest)
        return uri

    def get_file(self, uri: str, local: Path) -> Path:
        src = self.path_of(uri)
        if not src.is_file():
            raise HostError(f"Artifact {uri} is missing from the store.")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)
        return local
