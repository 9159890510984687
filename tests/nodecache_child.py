"""Run one node-cache sync in its own process (tests/test_nodecache.py starts several at once).

Usage: python tests/nodecache_child.py '<json: {"root", "endpoint", "bucket", "ref", ...}>'
Prints one JSON line: the sync's result and a digest of every file in the version.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.errors import HostError
from worker.nodecache import CacheSettings, NodeCache, S3Settings

ACCESS_KEY = "hbtest-access"
SECRET_KEY = "hbtest-secret-key"


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(path)):
        dirnames.sort()
        for f in sorted(filenames):
            if f == ".complete":
                continue
            p = Path(dirpath) / f
            h.update(str(p.relative_to(path)).encode() + b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    args = json.loads(sys.argv[1])
    cache = NodeCache(
        CacheSettings(root=Path(args["root"]), budget_bytes=args.get("budget", 0)),
        S3Settings(
            endpoint_url=args["endpoint"],
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            buckets=(args["bucket"],),
            concurrency=args.get("concurrency", 16),
            read_timeout_s=args.get("read_timeout_s", 10.0),
        ),
    )
    try:
        result = cache.sync(args["ref"])
    except HostError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        sys.exit(3)
    print(
        json.dumps(
            {
                "path": str(result.path),
                "fetched_files": result.fetched_files,
                "already_complete": result.already_complete,
                "digest": tree_digest(result.path) if args.get("digest", True) else "",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
