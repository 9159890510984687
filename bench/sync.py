"""Node-cache sync benchmark: the project's S3 sync against s5cmd, aws s3 sync and rclone.

All tools read the same data from one local SeaweedFS (``weed server -s3`` on loopback,
started here) and write to local disk. Scenarios (issue 3):

- S1 cold sync of 2,000 x 100 KB objects
- S2 no-op re-sync of S1 (the project: one manifest pass + an lstat per file, no request)
- S3 1 % changed + 1 % added (a new version: unchanged files come from the cached one)
- S4 4 x 64 MB objects
- S5 8 workers on one node starting at once (bytes served / dataset bytes, via a counting proxy)
- S6 an N-shard run on N hosts (N=4): each host's cache syncs its shard's samples only, one host
  also the evaluation's manifest and the report's gallery (bytes served to all hosts / dataset bytes)

Rounds are interleaved (each round runs every tool once, in a rotating order) and the
median of the rounds is reported. The project's sync runs in this process, as in a
host worker that is already up; the anchors are their CLIs (their start-up time is in
their figures: s5cmd's is milliseconds, the aws CLI's about half a second).

The last line reads:
``sync: S1_vs_s5cmd=<x> S1_vs_awscli=<x> S2_vs_S1=<x> S4_vs_s5cmd=<x> S5_bytes_ratio=<x>
S6_shard_bytes_ratio=<x>``
(ratio = project time / anchor time; bytes ratio = bytes served / dataset bytes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from faultproxy import FaultProxy  # noqa: E402
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3  # noqa: E402

from worker import contract  # noqa: E402
from worker.nodecache import CacheSettings, NodeCache, S3Settings, Selection  # noqa: E402

BIN = Path(sys.executable).parent
BUCKET = "hb-bench"


def _env(endpoint: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        RCLONE_CONFIG="/dev/null",
        RCLONE_S3_PROVIDER="Other",
        RCLONE_S3_ENDPOINT=endpoint,
        RCLONE_S3_ACCESS_KEY_ID=ACCESS_KEY,
        RCLONE_S3_SECRET_ACCESS_KEY=SECRET_KEY,
        RCLONE_S3_REGION=REGION,
    )
    return env


def _run(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return took


def _make_version(
    root: Path, endpoint: str, prefix: str, files: list[tuple[str, bytes]], name: str
) -> contract.DatasetRef:
    """Write a dataset version locally, upload it with s5cmd, return its ref."""
    local = root / prefix
    rows = []
    for i, (image, data) in enumerate(files):
        p = local / image
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        rows.append(
            {
                "id": f"s{i}",
                "image": image,
                "text": "",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
        )
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (local / "manifest.jsonl").write_bytes(manifest)
    (local / "dataset.json").write_text(json.dumps({"name": name, "version": prefix, "task": "ocr"}))
    _run(
        [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "cp", f"{local}/*", f"s3://{BUCKET}/{prefix}/"],
        _env(endpoint),
    )
    shutil.rmtree(local)
    return contract.DatasetRef(
        name=name,
        version=prefix,
        task="ocr",
        uri=f"s3://{BUCKET}/{prefix}/",
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
        sample_count=len(rows),
    )


def _crt_wait(future: Any) -> None:
    # result() returns when the bytes are in, before the temp file is renamed to its name
    # (s3transfer's RenameTempFileHandler runs in a done callback): wait for that too.
    future.result()
    future._coordinator.wait_until_on_done_callbacks_complete()


def _blob(seed: str, size: int) -> bytes:
    block = hashlib.sha512(seed.encode()).digest() * 64  # 4 KB, distinct per object
    return (block * (size // len(block) + 1))[:size]


class Bench:
    def __init__(self, work: Path, server: SeaweedS3, proxy: FaultProxy) -> None:
        self.work = work
        self.server = server
        self.proxy = proxy
        self.endpoint = server.endpoint
        self.env = _env(self.endpoint)
        self.times: dict[str, list[float]] = {}
        self._crt: Any = None

    def cache(self, root: Path, endpoint: str | None = None) -> NodeCache:
        return NodeCache(
            CacheSettings(root=root, budget_bytes=0),
            S3Settings(
                endpoint_url=endpoint or self.endpoint,
                region=REGION,
                access_key_id=ACCESS_KEY,
                secret_access_key=SECRET_KEY,
                buckets=(BUCKET,),
                concurrency=64,
            ),
        )

    def record(self, key: str, seconds: float) -> None:
        self.times.setdefault(key, []).append(seconds)

    def fresh(self, name: str) -> Path:
        p = self.work / name
        shutil.rmtree(p, ignore_errors=True)
        p.mkdir(parents=True)
        return p

    # -- the tools

    def project(self, ref: contract.DatasetRef, root: Path) -> float:
        t0 = time.perf_counter()
        self.cache(root).sync(ref)
        return time.perf_counter() - t0

    def s5cmd(self, ref: contract.DatasetRef, dest: Path, verb: str = "cp") -> float:
        src = ref["uri"] + "*"
        return _run([str(BIN / "s5cmd"), "--endpoint-url", self.endpoint, verb, src, f"{dest}/"], self.env)

    def awscli(self, ref: contract.DatasetRef, dest: Path) -> float:
        return _run(
            [
                str(BIN / "aws"),
                "--endpoint-url",
                self.endpoint,
                "s3",
                "sync",
                ref["uri"],
                str(dest),
                "--only-show-errors",
            ],
            self.env,
        )

    def rclone(self, ref: contract.DatasetRef, dest: Path) -> float:
        src = ":s3:" + ref["uri"][len("s3://") :]
        return _run(
            [str(BIN / "rclone"), "copy", src, str(dest), "--transfers", "64", "--checkers", "64", "-q"],
            self.env,
        )

    def crt(self, ref: contract.DatasetRef, dest: Path) -> float:
        """The other library measured for the engine: boto3's CRT transfer manager (awscrt), in process.

        The manifest, then every object it names through one CRTTransferManager, then the
        sha256 of each file checked as the project does: a floor for an engine built on it
        (no staging, no seal, no cache bookkeeping).
        """
        import botocore.session
        from s3transfer.crt import (
            BotocoreCRTCredentialsWrapper,
            BotocoreCRTRequestSerializer,
            CRTTransferManager,
            create_s3_crt_client,
        )

        t0 = time.perf_counter()
        bucket, _, prefix = ref["uri"][len("s3://") :].partition("/")
        if self._crt is None:
            # Built by hand: boto3's create_transfer_manager gives its CRT client no endpoint_url
            # (boto/boto3#4839), so it cannot reach a local S3 server.
            session = botocore.session.Session()
            session.set_credentials(ACCESS_KEY, SECRET_KEY)
            serializer = BotocoreCRTRequestSerializer(
                session, {"region_name": REGION, "endpoint_url": self.endpoint}
            )
            creds = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
            client = create_s3_crt_client(REGION, creds, use_ssl=False, part_size=16 * 1024 * 1024)
            self._crt = CRTTransferManager(client, serializer)
        manager = self._crt
        _crt_wait(manager.download(bucket, prefix + "manifest.jsonl", str(dest / "manifest.jsonl")))
        rows = [json.loads(line) for line in (dest / "manifest.jsonl").read_bytes().splitlines()]
        futures = []
        for row in rows:
            target = dest / row["image"]
            target.parent.mkdir(parents=True, exist_ok=True)
            futures.append(manager.download(bucket, prefix + row["image"], str(target)))
        for f in futures:
            _crt_wait(f)
        for row in rows:
            h = hashlib.sha256()
            with open(dest / row["image"], "rb", buffering=0) as fh:
                while chunk := fh.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != row["sha256"]:
                raise RuntimeError(f"crt: {row['image']} has the wrong sha256")
        return time.perf_counter() - t0

    def s5(self, ref: contract.DatasetRef, dataset_bytes: int, workers: int = 8) -> tuple[float, float]:
        """8 processes sync the same version into one fresh cache through the counting proxy."""
        root = self.fresh("s5-cache")
        self.proxy.reset()
        args = json.dumps(
            {
                "root": str(root),
                "endpoint": self.proxy.url,
                "bucket": BUCKET,
                "ref": ref,
                "digest": False,
                "concurrency": 64,
            }
        )
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "nodecache_child.py"), args],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        for p in procs:
            out = p.communicate(timeout=600)[0]
            if p.returncode != 0:
                raise RuntimeError(f"an S5 worker failed: {out}")
        took = time.perf_counter() - t0
        return took, self.proxy.bytes_out / dataset_bytes

    def s6(self, ref: contract.DatasetRef, dataset_bytes: int, hosts: int = 4) -> float:
        """An N-shard run on N hosts (one fresh cache each): bytes served to all of them / dataset bytes."""
        self.proxy.reset()
        for shard in range(hosts):
            cache = self.cache(self.fresh(f"s6-host{shard}"), self.proxy.url)
            cache.sync(ref, select=Selection.of_shard(shard, hosts))
            if shard == 0:  # evaluation (the manifest) and the report (its gallery) on the first host
                cache.sync(ref, select=Selection.manifest())
                cache.sync(ref, select=Selection.of_ids({f"s{i}" for i in range(8)}))
        return self.proxy.bytes_out / dataset_bytes


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 rounds, no rclone anchor (make bench-sync)")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--objects", type=int, default=2000)
    ap.add_argument(
        "--crt",
        action="store_true",
        help="also time boto3's CRT transfer manager (awscrt) on S1 and S4, the engine candidate not chosen",
    )
    args = ap.parse_args()
    rounds = args.rounds or (5 if args.quick else 7)
    anchors = ["s5cmd", "awscli"] + ([] if args.quick else ["rclone"]) + (["crt"] if args.crt else [])
    work = Path(tempfile.mkdtemp(prefix="hb-bench-sync-"))
    server = SeaweedS3(work / "weed").start()
    proxy = FaultProxy("127.0.0.1", server.port).start()
    started = time.monotonic()
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        n = args.objects
        s1_files = [(f"img/{i % 20:02d}/{i:05d}.png", _blob(f"s1-{i}", 100 * 1024)) for i in range(n)]
        s1 = _make_version(work / "up", server.endpoint, "s1", s1_files, "bench")
        s1_bytes = sum(len(d) for _, d in s1_files)
        # S3: 1 % changed, 1 % added, same dataset name: a new version of S1
        changed = set(range(0, n, 100))
        s3_files = [
            (img, _blob(f"s3-{i}", len(d)) if i in changed else d) for i, (img, d) in enumerate(s1_files)
        ]
        s3_files += [(f"img/new/{i:05d}.png", _blob(f"s3-new-{i}", 100 * 1024)) for i in range(n // 100)]
        s3 = _make_version(work / "up", server.endpoint, "s3", s3_files, "bench")
        del s1_files, s3_files
        s4_files = [(f"big/{i}.bin", _blob(f"s4-{i}", 64 * 1024 * 1024)) for i in range(4)]
        s4 = _make_version(work / "up", server.endpoint, "s4", s4_files, "big")
        del s4_files
        print(f"bench-sync: data uploaded in {time.monotonic() - started:.1f}s; {rounds} rounds", flush=True)

        b = Bench(work, server, proxy)
        import obstore  # noqa: F401 - a host worker has it loaded already; keep its import out of round 1

        s5_ratio = s6_ratio = 0.0
        for r in range(rounds):
            order = ["project", *anchors]
            order = order[r % len(order) :] + order[: r % len(order)]
            for tool in order:
                dest = b.fresh(f"dest-{tool}")
                if tool == "project":
                    b.record("S1/project", b.project(s1, dest))
                    b.record("S2/project", b.project(s1, dest))
                    b.record("S3/project", b.project(s3, dest))
                    dest = b.fresh(f"dest-{tool}")
                    b.record("S4/project", b.project(s4, dest))
                else:
                    run: Callable[[contract.DatasetRef, Path], float] = getattr(b, tool)
                    b.record(f"S1/{tool}", run(s1, dest))
                    if tool == "s5cmd":
                        b.record("S2/s5cmd", b.s5cmd(s1, dest, "sync"))
                        b.record("S3/s5cmd", b.s5cmd(s3, dest, "sync"))
                    elif tool == "awscli":
                        b.record("S2/awscli", b.awscli(s1, dest))
                    dest = b.fresh(f"dest-{tool}")
                    b.record(f"S4/{tool}", run(s4, dest))
                shutil.rmtree(dest, ignore_errors=True)
            if r < 2:  # S5 is about bytes, which do not vary; two rounds give its time too
                took, s5_ratio = b.s5(s1, s1_bytes)
                b.record("S5/project-8-workers", took)
            if r == 0:  # S6 is about bytes too: one round
                s6_ratio = b.s6(s1, s1_bytes)
            print(f"  round {r + 1}/{rounds} done at {time.monotonic() - started:.0f}s", flush=True)

        med: dict[str, float] = {k: statistics.median(v) for k, v in sorted(b.times.items())}
        for k, v in med.items():
            spread = b.times[k]
            lo, hi = min(spread) * 1000, max(spread) * 1000
            print(f"  {k:24s} median {v * 1000:9.1f} ms   (min {lo:.1f}, max {hi:.1f})")
        s1_mb = s1_bytes / 1e6
        mbps = {t: s1_mb / med[f"S1/{t}"] for t in ["project", *anchors]}
        print("  S1 throughput: " + ", ".join(f"{t} {v:.0f} MB/s" for t, v in mbps.items()))
        if "S1/crt" in med:
            print(
                f"  candidate crt: S1_vs_s5cmd={med['S1/crt'] / med['S1/s5cmd']:.2f} "
                f"S4_vs_s5cmd={med['S4/crt'] / med['S4/s5cmd']:.2f}"
            )
        if "S3/s5cmd" in med:
            print(f"  S3_vs_s5cmd_sync={med['S3/project'] / med['S3/s5cmd']:.2f}")
        print(f"  total {time.monotonic() - started:.0f}s")
        print(
            f"sync: S1_vs_s5cmd={med['S1/project'] / med['S1/s5cmd']:.2f} "
            f"S1_vs_awscli={med['S1/project'] / med['S1/awscli']:.2f} "
            f"S2_vs_S1={med['S2/project'] / med['S1/project']:.3f} "
            f"S4_vs_s5cmd={med['S4/project'] / med['S4/s5cmd']:.2f} "
            f"S5_bytes_ratio={s5_ratio:.3f} "
            f"S6_shard_bytes_ratio={s6_ratio:.3f}"
        )
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
