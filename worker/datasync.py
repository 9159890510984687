"""Make a dataset version available on this host as a local directory.

``file://`` datasets are used in place (mounted read-only), after checking that
the directory is under an allowed root and that its manifest is still the one
registered: versions are immutable, and a changed manifest would make the
run's numbers lie about what they measured.

``s3://`` datasets are synced into the node cache (:mod:`worker.nodecache`) and
used from there; :func:`dataset_lease` holds the cached version in use (safe from
eviction) for as long as a container reads it.

A version may have both: a ``file://`` ``uri`` and an ``s3_uri`` with the same
manifest (checked at registration). :func:`choose_source` picks the local
directory when it lies under this host's dataset roots and its manifest hash is
the registered one, and the S3 copy (through the node cache) otherwise.
"""

from __future__ import annotations

import heapq
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from worker import contract
from worker.config import HostConfig
from worker.errors import HostError
from worker.manifest import sha256_file
from worker.nodecache import EVERYTHING, NodeCache, ProgressFn, Selection

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where this host reads a dataset version from: ``ref`` (its ``uri`` is the one to use) and why."""

    ref: contract.DatasetRef
    reason: str
    path: Path | None = None  # the checked local directory, when that is the choice

    @property
    def s3(self) -> bool:
        return urlparse(self.ref["uri"]).scheme == "s3"


def choose_source(ref: contract.DatasetRef, roots: list[Path]) -> Source:
    """The source this host should read: the local directory, or the S3 copy when that one is unusable.

    A ``file://`` version with an ``s3_uri`` uses its directory only when it is under
    one of ``roots`` and its manifest hash is the registered one; otherwise the S3
    copy (the returned ref's ``uri`` is the ``s3_uri``). Without an ``s3_uri`` the
    ref is returned as is (:func:`local_dataset_dir` says what is wrong with it).
    """
    s3_uri = ref.get("s3_uri") or ""
    if urlparse(ref["uri"]).scheme != "file" or not s3_uri:
        return Source(ref, "the version's only source")
    try:
        path = local_dataset_dir(ref, roots=roots)
    except HostError as e:
        return Source({**ref, "uri": s3_uri}, f"its local directory is not usable here ({e})")
    return Source(ref, "its local directory is under this host's dataset roots with its manifest", path)


@contextmanager
def dataset_lease(
    ref: contract.DatasetRef,
    cfg: HostConfig,
    on_progress: ProgressFn | None = None,
    select: Selection = EVERYTHING,
) -> Iterator[Path]:
    """Yield the dataset version's local directory, held in use until the block ends.

    ``s3://``: synced into the node cache first (``on_progress`` gets
    :class:`worker.nodecache.SyncProgress` ticks), verified, and protected from
    eviction while the block runs; only the objects of the ``select``ed samples are
    fetched (a local directory has them all). ``file://``: checked as by :func:`local_dataset_dir`.
    ``file://`` with an ``s3_uri``: the local directory when :func:`choose_source`
    accepts it here, else the S3 copy through the node cache.

    Raises:
        HostError: the dataset cannot be made available; ``permanent`` says whether a retry may help.
    """
    source = choose_source(ref, cfg.dataset_roots)
    if source.ref is not ref:
        logger.info(
            "dataset %s@%s: reading %s: %s", ref["name"], ref["version"], source.ref["uri"], source.reason
        )
    ref = source.ref
    if source.s3:
        with NodeCache.from_config(cfg).lease(ref, on_progress=on_progress, select=select) as path:
            yield path
    else:
        yield source.path or local_dataset_dir(ref, roots=cfg.dataset_roots)


def local_dataset_dir(ref: contract.DatasetRef, *, roots: list[Path]) -> Path:
    """Return the local directory of a ``file://`` version, verified against its manifest hash.

    (An ``s3://`` version is read through :func:`dataset_lease`, which syncs it into the
    node cache and holds it in use.)

    Raises:
        HostError: the URI is not allowed here, the directory is gone, or the
            manifest differs from the registered one.
    """
    parsed = urlparse(ref["uri"])
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


GALLERY_SIZE = 8  # hb_report.run_report.GALLERY_SIZE


def _score(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
        return None
    return float(value)


def _primary_metric(metrics_json: Path) -> str:
    """The metric the report ranks samples by (the rule of ``hb_report.inputs.primary_metric``)."""
    try:
        doc = json.loads(metrics_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {}
    names = doc.get("metrics", {}) if isinstance(doc, dict) else {}
    names = names if isinstance(names, dict) else {}
    declared = doc.get("primary_metric") if isinstance(doc, dict) else None
    if isinstance(declared, str) and declared in names:
        return declared
    return next((n for n in ("cer", "anls") if n in names), next(iter(names), "cer"))


def gallery_candidates(metrics_json: Path, per_sample: Path) -> set[str]:
    """The ids of the samples a run report may show in its gallery: a superset, to sync their images.

    The report shows the ``GALLERY_SIZE`` worst samples by the primary metric, unscored ones
    first. Which end is worse depends on the metric, a fact of the eval image, so both ends
    are taken: at most ``3 * GALLERY_SIZE`` ids, read in one streaming pass.
    """
    metric = _primary_metric(metrics_json)
    unscored: list[str] = []
    low: list[tuple[float, int, str]] = []  # max-heap of the smallest, by negation
    high: list[tuple[float, int, str]] = []
    with open(per_sample, encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            sid, value = str(row.get("id")), _score(row.get(metric))
            if value is None:
                if len(unscored) < GALLERY_SIZE:
                    unscored.append(sid)
                continue
            heapq.heappush(low, (-value, -n, sid))
            heapq.heappush(high, (value, -n, sid))
            if len(low) > GALLERY_SIZE:
                heapq.heappop(low)
            if len(high) > GALLERY_SIZE:
                heapq.heappop(high)
    return {*unscored, *(sid for *_, sid in low), *(sid for *_, sid in high)}
