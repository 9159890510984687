"""The node cache: S3 dataset versions synced to local disk before a run (no Django).

The package's rooms: :mod:`.layout` (directories, locks, LRU eviction), :mod:`.seal`
(the marker and the cheap re-check), :mod:`.transfer` (the S3 engine), :mod:`.reuse`
(files that need no fetch), :mod:`.sync` (the order of a sync) and :mod:`.cache` (the
:class:`NodeCache` facade). Layout::

    <root>/datasets/<name>/<manifest-sha>/      the version: dataset.json, manifest.jsonl, images, .complete
    <root>/staging/<name>-<manifest-sha>/      *.part files of the sync in progress (removed at the end)
    <root>/locks/<name>/<manifest-sha>.sync    one syncing process per version and node (filelock)
    <root>/locks/<name>/<manifest-sha>.lease   shared flock held by each run using it; mtime = last use

How a version becomes usable:

1. Under the version's sync lock, the manifest is fetched to a ``.part`` and checked
   against the run spec's ``manifest_sha256``; every image path in it is checked (hostile
   keys: ``..``, absolute paths, symlinked directories) before anything else is written.
2. The objects the manifest names are fetched by many concurrent GETs over one
   connection pool (obstore, the Rust ``object_store``, under asyncio), each to a ``.part`` that is
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

from worker.nodecache.cache import NodeCache
from worker.nodecache.settings import (
    EVERYTHING,
    MARKER,
    CacheEntry,
    CacheSettings,
    ProgressFn,
    S3Settings,
    Selection,
    SyncProgress,
    SyncResult,
)

__all__ = [
    "EVERYTHING",
    "MARKER",
    "CacheEntry",
    "CacheSettings",
    "NodeCache",
    "ProgressFn",
    "S3Settings",
    "Selection",
    "SyncProgress",
    "SyncResult",
]
