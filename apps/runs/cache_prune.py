"""Prediction cache eviction (``manage.py prune_predcache``): delete the entries not used lately.

An entry (``<cache>/<key[:2]>/<key>.json``, worker/predcache.py) carries its last use as
its modification time: the host writes it, and renews it on a hit once it is a day old.
Pruning lists the cache's entries with their size and time, then deletes those older than
the cutoff and, with a byte budget, the least recently used of the rest until the cache
fits. Only names of the cache's layout are touched (and ``.part`` leftovers of a writer
that died), nothing else under the prefix.

Safe while runs read the cache: a host that finds an entry gone between its look-up and its
read counts a miss and infers the sample; one that has read it keeps the line it read.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from apps.runs.artifacts import ArtifactError, Location, locate, s3_client_of_server
from apps.runs.services import prediction_cache_uri
from worker.s3 import s3_uri

_ENTRY = re.compile(r"^(?P<shard>[0-9a-f]{2})/(?P<key>[0-9a-f]{64})\.json(?:\.\d+\.part)?$")
_DELETE_BATCH = 1000  # S3 DeleteObjects takes at most 1,000 keys


@dataclass(frozen=True)
class Entry:
    uri: str
    name: str  # relative to the cache: "ab/ab12....json"
    size: int
    used: float  # last write or renewal, seconds since the epoch


@dataclass
class Pruned:
    removed: list[Entry] = field(default_factory=list)
    kept: int = 0
    kept_bytes: int = 0

    @property
    def freed(self) -> int:
        return sum(e.size for e in self.removed)


def cache_location() -> Location:
    uri = prediction_cache_uri()
    loc = locate(uri)
    if loc is None:
        raise ArtifactError(
            f"The prediction cache {uri} is not under HYPERBENCH_ARTIFACTS_URI or one of "
            "HYPERBENCH_ARTIFACTS_S3_ROOTS: the web side may not touch it."
        )
    return loc


def _is_entry(name: str) -> bool:
    m = _ENTRY.match(name)
    return bool(m and m["key"].startswith(m["shard"]))


def entries(loc: Location) -> Iterator[Entry]:
    """Every entry of the cache at ``loc``, with its size and last use."""
    if loc.path is not None:
        root = loc.path
        if not root.is_dir():
            return
        for sub in os.scandir(root):
            if not sub.is_dir(follow_symlinks=False):
                continue
            for f in os.scandir(sub.path):
                name = f"{sub.name}/{f.name}"
                if not _is_entry(name) or not f.is_file(follow_symlinks=False):
                    continue
                try:
                    st = f.stat(follow_symlinks=False)
                except FileNotFoundError:  # a writer's .part renamed meanwhile
                    continue
                yield Entry(Path(f.path).as_uri(), name, st.st_size, st.st_mtime)
        return
    prefix = loc.key if loc.key.endswith("/") else loc.key + "/"
    pages = s3_client_of_server().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
    for page in pages:
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) :]
            if _is_entry(name):
                uri = s3_uri(loc.bucket, obj["Key"])
                yield Entry(uri, name, int(obj["Size"]), obj["LastModified"].timestamp())


def plan(found: list[Entry], *, older_than: float, max_bytes: int | None) -> Pruned:
    """What to delete: entries last used before ``older_than``, then the least recently used
    until the rest holds at most ``max_bytes``."""
    out = Pruned()
    keep = sorted((e for e in found if e.used >= older_than), key=lambda e: e.used, reverse=True)
    out.removed = sorted((e for e in found if e.used < older_than), key=lambda e: e.used)
    if max_bytes is not None:
        total = 0
        for i, e in enumerate(keep):
            if total + e.size > max_bytes:
                out.removed.extend(sorted(keep[i:], key=lambda x: x.used))
                keep = keep[:i]
                break
            total += e.size
    out.kept, out.kept_bytes = len(keep), sum(e.size for e in keep)
    return out


def delete(loc: Location, doomed: list[Entry]) -> None:
    """Delete the entries (one already gone is fine: someone else pruned it)."""
    if loc.path is not None:
        for e in doomed:
            (loc.path / e.name).unlink(missing_ok=True)
        return
    prefix = loc.key if loc.key.endswith("/") else loc.key + "/"
    client = s3_client_of_server()
    for i in range(0, len(doomed), _DELETE_BATCH):
        batch = [{"Key": prefix + e.name} for e in doomed[i : i + _DELETE_BATCH]]
        answer = client.delete_objects(Bucket=loc.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = [x for x in answer.get("Errors", []) if x.get("Code") != "NoSuchKey"]
        if errors:
            first = errors[0]
            raise ArtifactError(
                f"S3 refused to delete {len(errors)} cache entries (first: {first.get('Key')}: "
                f"{first.get('Code')} {first.get('Message', '')}); the web server's keys need "
                "s3:DeleteObject on the cache's prefix."
            )
