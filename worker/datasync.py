"""Make a dataset version available on this host as a local directory.

``file://`` datasets are used in place (mounted read-only), after checking that
the directory is under an allowed root and that its manifest is still the one
registered: versions are immutable, and a changed manifest would make the
run's numbers lie about what they measured.

``s3://`` datasets are synced into the node cache (:mod:`worker.nodecache`) and
used from there; :func:`dataset_lease` holds the cached version in use (safe from
eviction) for as long as a container reads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from worker import contract
from worker.config import HostConfig
from worker.errors import HostError
from worker.manifest import sha256_file
from worker.nodecache import NodeCache, ProgressFn


@contextmanager
def dataset_lease(
    ref: contract.DatasetRef, cfg: HostConfig, on_progress: ProgressFn | None = None
) -> Iterator[Path]:
    """Yield the dataset version's local directory, held in use until the block ends.

    ``s3://``: synced into the node cache first (``on_progress`` gets
    :class:`worker.nodecache.SyncProgress` ticks), verified, and protected from
    eviction while the block runs. ``file://``: checked as by :func:`local_dataset_dir`.

    Raises:
        HostError: the dataset cannot be made available; ``permanent`` says whether a retry may help.
    """
    if urlparse(ref["uri"]).scheme == "s3":
        with NodeCache.from_config(cfg).lease(ref, on_progress=on_progress) as path:
            yield path
    else:
        yield local_dataset_dir(ref, roots=cfg.dataset_roots)


def local_dataset_dir(
    ref: contract.DatasetRef,
    *,
    roots: list[Path],
    cfg: HostConfig | None = None,
    on_progress: ProgressFn | None = None,
) -> Path:
    """Return the local directory of the dataset version, verified against its manifest hash.

    An ``s3://`` version is synced into the node cache (needs ``cfg``) but not
    held in use: prefer :func:`dataset_lease` around a container's lifetime.

    Raises:
        HostError: the URI is not allowed here, the directory is gone, or the
            manifest differs from the registered one.
    """
    parsed = urlparse(ref["uri"])
    if parsed.scheme == "s3":
        if cfg is None:
            raise HostError(
                f"Dataset {ref['name']}@{ref['version']} lives in S3 ({ref['uri']}); the caller gave no "
                "host configuration to sync it with."
            )
        return NodeCache.from_config(cfg).sync(ref, on_progress=on_progress).path
    if parsed.scheme != "file":
        raise HostError(f"Dataset URI {ref['uri']!r} has an unsupported scheme.")
    root = Path(unquote(parsed.path)).resolve()
    if not any(root == r or root.is_relative_to(r) for r in roots):
        raise HostError(
            f"Dataset directory {root} is outside this host's dataset roots ({', '.join(map(str, roots))}); "
            "set HYPERBENCH_DATASET_ROOTS on the worker."
        )
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        raise HostError(f"Dataset {ref['name']}@{ref['version']}: {manifest} is missing on host.")
    actual = sha256_file(manifest)
    if actual != ref["manifest_sha256"]:
        raise HostError(
            f"Dataset {ref['name']}@{ref['version']}: the manifest at {manifest} changed since registration "
            f"(registered {ref['manifest_sha256'][:12]}, found {actual[:12]}); register the new content as a "
            "new version."
        )
    return root
