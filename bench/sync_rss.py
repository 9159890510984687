"""Peak memory (RSS) of the S3 dataset path at 10k and 100k samples: flat, or growing?

For each size it uploads a dataset of tiny objects to a local SeaweedFS, then runs,
each in a fresh process so that ``ru_maxrss`` is that step's own peak:
``import`` (the baseline), ``validate_s3`` (registration), a cold ``NodeCache.sync``
and a no-op re-sync. Prints one line per size and step, in MB.

    .venv/bin/python bench/sync_rss.py [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3  # noqa: E402

BUCKET = "hb-rss"

_CHILD = r"""
import json, sys
sys.path[:0] = [{repo!r}]
from worker.nodecache import CacheSettings, NodeCache, S3Settings
from worker.s3manifest import validate_s3
args = json.loads(sys.argv[1])
step = args["step"]
if step == "validate":
    import boto3
    from botocore.config import Config
    client = boto3.client("s3", endpoint_url=args["endpoint"], aws_access_key_id=args["key"],
        aws_secret_access_key=args["secret"], region_name=args["region"],
        config=Config(s3={{"addressing_style": "path"}}, max_pool_connections=32))
    validate_s3(args["ref"]["uri"], client)
elif step in ("sync", "resync"):
    cache = NodeCache(CacheSettings(root=args["root"], budget_bytes=0),
        S3Settings(endpoint_url=args["endpoint"], region=args["region"], access_key_id=args["key"],
                   secret_access_key=args["secret"], buckets=({bucket!r},), concurrency=32))
    cache.sync(args["ref"])
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec
print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])
"""


def _upload(work: Path, endpoint: str, prefix: str, n: int) -> dict[str, object]:
    local = work / prefix
    rows = []
    for i in range(n):
        image = f"img/{i % 100:02d}/{i:06d}.png"
        data = f"sample {i} ".encode() * 4
        p = local / image
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        rows.append(
            {
                "id": f"s{i}",
                "image": image,
                "text": f"text {i}",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (local / "manifest.jsonl").write_bytes(manifest)
    (local / "dataset.json").write_text(json.dumps({"name": f"rss{n}", "version": "1", "task": "ocr"}))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_REGION=REGION)
    s5cmd = Path(sys.executable).parent / "s5cmd"
    subprocess.run(
        [str(s5cmd), "--endpoint-url", endpoint, "cp", f"{local}/*", f"s3://{BUCKET}/{prefix}/"],
        env=env,
        check=True,
        capture_output=True,
    )
    shutil.rmtree(local)
    return {
        "name": f"rss{n}",
        "version": "1",
        "task": "ocr",
        "uri": f"s3://{BUCKET}/{prefix}/",
        "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
        "sample_count": n,
    }


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    sizes = [int(s) for s in ap.parse_args().sizes.split(",")]
    work = Path(tempfile.mkdtemp(prefix="hb-rss-"))
    server = SeaweedS3(work / "weed").start()
    code = _CHILD.format(repo=str(REPO), bucket=BUCKET)
    try:
        server.client().create_bucket(Bucket=BUCKET)
        for n in sizes:
            t0 = time.monotonic()
            ref = _upload(work, server.endpoint, f"n{n}", n)
            print(f"rss: {n} samples uploaded in {time.monotonic() - t0:.0f}s", flush=True)
            root = work / f"cache-{n}"
            for step in ("import", "validate", "sync", "resync"):
                args = {
                    "step": step,
                    "endpoint": server.endpoint,
                    "key": ACCESS_KEY,
                    "secret": SECRET_KEY,
                    "region": REGION,
                    "ref": ref,
                    "root": str(root),
                }
                t0 = time.monotonic()
                out = subprocess.run(
                    [sys.executable, "-c", code, json.dumps(args)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if out.returncode != 0:
                    raise RuntimeError(f"{step} failed: {out.stderr[-2000:]}")
                kb = int(out.stdout.strip().splitlines()[-1])
                print(
                    f"rss: samples={n} step={step:8s} peak_rss={kb / 1024:6.1f} MB "
                    f"time={time.monotonic() - t0:6.1f}s",
                    flush=True,
                )
            shutil.rmtree(root, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
