"""The node cache against a real S3-protocol server (SeaweedFS) over HTTP on loopback.

Requests go through tests/faultproxy.py, which counts them and injects faults.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy, Rule
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from worker import config as host_config
from worker.datasync import dataset_lease
from worker.errors import HostError
from worker.manifest import ManifestError
from worker.nodecache import MARKER, CacheSettings, NodeCache, S3Settings, SyncProgress
from worker.s3manifest import validate_s3

REPO = Path(__file__).resolve().parent.parent
CHILD = REPO / "tests" / "nodecache_child.py"
pytestmark = pytest.mark.timeout(300)


def _cache(root: Path, proxy: FaultProxy, bucket: str, *, budget: int = 0, **s3: Any) -> NodeCache:
    settings: dict[str, Any] = {
        "concurrency": 16,
        "max_attempts": 4,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.2,
        "read_timeout_s": 2.0,
        "connect_timeout_s": 2.0,
    }
    settings.update(s3)
    return NodeCache(
        CacheSettings(root=root, budget_bytes=budget, lock_timeout_s=120),
        S3Settings(
            endpoint_url=proxy.url,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            buckets=(bucket,),
            **settings,
        ),
    )


def _files(path: Path) -> dict[str, bytes]:
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file() and p.name != MARKER:
            out[str(p.relative_to(path))] = p.read_bytes()
    return out


def _image_gets(proxy: FaultProxy, bucket: str) -> dict[str, int]:
    return proxy.gets(f"/{bucket}/v1/images/")


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    return root


def test_a_cold_sync_fetches_and_verifies_every_file_and_a_resync_makes_no_request(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-cold", "v1/", count=60)
    ticks: list[SyncProgress] = []
    cache = _cache(cache_root, s3_proxy, "hb-cold")
    result = cache.sync(ref, on_progress=ticks.append)
    assert result.fetched_files == 60
    assert not result.already_complete
    files = _files(result.path)
    assert len(files) == 62  # 60 images + manifest.jsonl + dataset.json
    for row in map(json.loads, files["manifest.jsonl"].splitlines()):
        assert hashlib.sha256(files[row["image"]]).hexdigest() == row["sha256"]
    assert (result.path / MARKER).is_file()
    assert result.path == cache_root / "datasets" / "docs" / ref["manifest_sha256"]
    assert ticks[-1].phase == "done"
    assert ticks[-1].files_done == 60
    assert ticks[-1].bytes_done == 60 * 2048
    assert not list((cache_root / "staging").iterdir())

    s3_proxy.reset()
    again = cache.sync(ref)
    assert again.already_complete
    assert again.fetched_files == 0
    assert s3_proxy.counts == {}, "a no-op re-sync must not send a single request"


def test_eight_processes_syncing_at_once_fetch_every_object_exactly_once(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-eight", "v1/", count=200)
    s3_proxy.reset()
    args = json.dumps({"root": str(cache_root), "endpoint": s3_proxy.url, "bucket": "hb-eight", "ref": ref})
    procs = [
        subprocess.Popen([sys.executable, str(CHILD), args], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    gets = _image_gets(s3_proxy, "hb-eight")
    assert len(gets) == 200, "every image fetched exactly once"
    assert set(gets.values()) == {1}, "every image fetched exactly once"
    assert s3_proxy.gets("/hb-eight/v1/manifest.jsonl") == {"/hb-eight/v1/manifest.jsonl": 1}
    assert sum(o["fetched_files"] for o in outs) == 200
    assert len({o["digest"] for o in outs}) == 1
    assert len({o["path"] for o in outs}) == 1


def test_a_sync_killed_mid_download_leaves_no_final_file_and_no_marker_and_the_next_sync_completes(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    # over 1 MB: streamed in chunks (smaller bodies land in one write), so a .part is caught half-written
    ref = make_dataset(s3_server.client(), "hb-kill", "v1/", count=16, size=1_500_000)
    s3_proxy.add(Rule("slow", "/images/", times=-1, delay_per_chunk_s=0.2))
    args = json.dumps(
        {"root": str(cache_root), "endpoint": s3_proxy.url, "bucket": "hb-kill", "ref": ref, "concurrency": 4}
    )
    child = subprocess.Popen([sys.executable, str(CHILD), args], stdout=subprocess.PIPE)
    staging = cache_root / "staging" / f"docs-{ref['manifest_sha256']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(
        p.stat().st_size > 0 for p in (staging.glob("*.part") if staging.is_dir() else [])
    ):
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=10)
    vdir = cache_root / "datasets" / "docs" / ref["manifest_sha256"]
    assert any(p.stat().st_size > 0 for p in staging.glob("*.part")), "killed while a .part was being written"
    assert not (vdir / MARKER).exists()
    rows = [json.loads(line) for line in (vdir / "manifest.jsonl").read_bytes().splitlines()]
    for row in rows:  # whatever reached its final name is whole and right
        p = vdir / row["image"]
        if p.exists():
            assert hashlib.sha256(p.read_bytes()).hexdigest() == row["sha256"]
    assert sum((vdir / r["image"]).exists() for r in rows) < len(rows)

    s3_proxy.reset()
    result = _cache(cache_root, s3_proxy, "hb-kill").sync(ref)
    assert (vdir / MARKER).is_file()
    assert not staging.exists()
    for row in rows:
        assert hashlib.sha256((vdir / row["image"]).read_bytes()).hexdigest() == row["sha256"]
    assert 0 < result.fetched_files < len(rows) or result.fetched_files == len(rows)


@pytest.mark.parametrize("kind", ["503", "reset", "stall", "truncate", "corrupt"])
def test_transient_faults_are_retried_and_the_sync_succeeds(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path, kind: str
) -> None:
    bucket = f"hb-fault-{kind}"
    ref = make_dataset(
        s3_server.client(), bucket, "v1/", count=20, size=100_000, with_sha=(kind != "corrupt")
    )
    s3_proxy.reset()
    # two faults on each of three objects (and on the manifest for 503s and resets)
    for i in (1, 7, 13):
        s3_proxy.add(Rule(kind, f"doc-{i:05d}", times=2, stall_s=30))  # type: ignore[arg-type]
    if kind in ("503", "reset"):
        s3_proxy.add(Rule(kind, "manifest.jsonl", times=2))  # type: ignore[arg-type]
    result = _cache(cache_root, s3_proxy, bucket, read_timeout_s=1.0).sync(ref)
    assert (result.path / MARKER).is_file()
    for row in map(json.loads, (result.path / "manifest.jsonl").read_bytes().splitlines()):
        data = (result.path / row["image"]).read_bytes()
        assert len(data) == row["size"]
        if "sha256" in row:
            assert hashlib.sha256(data).hexdigest() == row["sha256"]
    gets = _image_gets(s3_proxy, bucket)
    assert gets[f"/{bucket}/v1/images/1/doc-00001.png"] == 3
    assert gets[f"/{bucket}/v1/images/0/doc-00000.png"] == 1


def test_when_retries_are_exhausted_the_sync_fails_cleanly_with_no_marker(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-exhaust", "v1/", count=10)
    s3_proxy.reset()
    s3_proxy.add(Rule("503", "doc-00003", times=-1))
    with pytest.raises(HostError) as err:
        _cache(cache_root, s3_proxy, "hb-exhaust").sync(ref)
    assert "after 4 attempts" in str(err.value)
    assert "SlowDown" in str(err.value)
    assert not err.value.permanent
    assert s3_proxy.gets("doc-00003") == {"/hb-exhaust/v1/images/3/doc-00003.png": 4}
    vdir = cache_root / "datasets" / "docs" / ref["manifest_sha256"]
    assert not (vdir / MARKER).exists()
    assert not (vdir / "images/3/doc-00003.png").exists()
    assert not (cache_root / "staging" / f"docs-{ref['manifest_sha256']}").exists()


def test_a_byte_flipped_after_completion_is_detected_before_use_and_refetched(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    for with_sha in (True, False):
        bucket = f"hb-flip-{int(with_sha)}"
        ref = make_dataset(s3_server.client(), bucket, "v1/", count=20, with_sha=with_sha)
        cache = _cache(cache_root / bucket, s3_proxy, bucket)
        vdir = cache.sync(ref).path
        victim = vdir / "images/2/doc-00006.png"
        good = victim.read_bytes()
        os.chmod(victim, 0o644)
        with open(victim, "r+b") as f:  # flip one byte, keep size and even mtime
            st = os.fstat(f.fileno())
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 1]))
        os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
        s3_proxy.reset()
        result = cache.sync(ref)
        assert result.repaired_files == 1
        assert result.fetched_files == 1
        assert victim.read_bytes() == good
        assert _image_gets(s3_proxy, bucket) == {f"/{bucket}/v1/images/2/doc-00006.png": 1}


@pytest.mark.parametrize("image", ["../x", "/etc/passwd", "images/../../x", "a\\..\\x"])
def test_path_traversal_keys_are_refused_and_nothing_is_written_outside_the_cache(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path, image: str
) -> None:
    root = tmp_path / "deep" / "cache"
    root.mkdir(parents=True)
    bucket = "hb-traversal"
    ref = make_dataset(
        s3_server.client(),
        bucket,
        f"v-{abs(hash(image))}/",
        count=5,
        extra_lines=[{"id": "evil", "image": image, "text": ""}],
    )
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(HostError, match="line 6"):
        _cache(root, s3_proxy, bucket).sync(ref)
    after = {p for p in tmp_path.rglob("*")}
    assert all(p.is_relative_to(root) for p in after - before)
    assert not list((root / "datasets").rglob("*.png")), "nothing fetched once a hostile path is seen"


def test_a_symlink_in_the_cache_is_refused(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    root = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    ref = make_dataset(s3_server.client(), "hb-symlink", "v1/", count=8)
    vdir = root / "datasets" / "docs" / ref["manifest_sha256"]
    (vdir / "images").mkdir(parents=True)
    os.symlink(outside, vdir / "images" / "1")  # a planted link: images/1/... would land outside
    with pytest.raises(HostError, match="symlink"):
        _cache(root, s3_proxy, "hb-symlink").sync(ref)
    assert list(outside.iterdir()) == []
    assert not (vdir / MARKER).exists()

    # a file replaced by a symlink after completion is refused too
    os.unlink(vdir / "images" / "1")
    cache = _cache(root, s3_proxy, "hb-symlink")
    cache.sync(ref)
    target = vdir / "images/0/doc-00000.png"
    os.unlink(target)
    os.symlink("/etc/hostname", target)
    with pytest.raises(HostError, match="symlink"):
        cache.sync(ref)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a 2 MB tmpfs (the tests run as root): {proc.stderr.decode()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_cache_disk_fails_clearly_and_leaves_other_versions_untouched(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, small_disk: Path
) -> None:
    client = s3_server.client()
    small = make_dataset(client, "hb-full", "small/", count=10, size=50_000, name="small")
    big = make_dataset(client, "hb-full", "big/", count=30, size=100_000, name="big")
    cache = _cache(small_disk, s3_proxy, "hb-full")
    kept = cache.sync(small).path
    before = _files(kept)
    with pytest.raises(HostError, match="disk"):
        cache.sync(big)
    assert _files(kept) == before
    again = cache.sync(small)
    assert again.already_complete
    big_dir = small_disk / "datasets" / "big" / big["manifest_sha256"]
    assert not (big_dir / MARKER).exists()
    assert not list((small_disk / "staging").iterdir())

    # without declared sizes the check up front cannot know: the write itself hits ENOSPC
    bucket = "hb-full-nosize"
    big2 = make_dataset(client, bucket, "big/", count=30, size=100_000, name="big2")
    rows = [
        {k: v for k, v in r.items() if k != "size"}
        for r in map(
            json.loads, client.get_object(Bucket=bucket, Key="big/manifest.jsonl")["Body"].read().splitlines()
        )
    ]
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client.put_object(Bucket=bucket, Key="big/manifest.jsonl", Body=manifest)
    big2["manifest_sha256"] = hashlib.sha256(manifest).hexdigest()
    with pytest.raises(HostError, match="disk is full"):
        _cache(small_disk, s3_proxy, bucket).sync(big2)
    assert _files(kept) == before


def test_lru_eviction_never_evicts_a_version_in_use(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    client = s3_server.client()
    refs = [make_dataset(client, "hb-lru", f"d{i}/", count=10, size=10_000, name=f"d{i}") for i in range(4)]
    cache = _cache(cache_root, s3_proxy, "hb-lru", budget=250_000)
    with cache.lease(refs[0]) as in_use:  # oldest, but in use the whole time
        time.sleep(0.02)
        cache.sync(refs[1])
        time.sleep(0.02)
        cache.sync(refs[2])  # 3 x ~100 KB > 250 KB: d1 (least recently used, idle) goes
        names = {e.name for e in cache.entries()}
        assert names == {"d0", "d2"}
        assert (in_use / MARKER).is_file()
        entry = next(e for e in cache.entries() if e.name == "d0")
        assert entry.in_use
        assert entry.complete
        assert entry.bytes > 100_000
        with cache.lease(refs[2]), pytest.raises(HostError, match="in use"):
            cache.sync(refs[3])  # d0 and d2 both in use: cannot make room
    cache.sync(refs[3])  # now d0 (least recently used) may go
    assert {e.name for e in cache.entries()} == {"d2", "d3"}


def test_a_new_version_copies_unchanged_files_and_fetches_only_the_changes(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    client = s3_server.client()
    v1 = make_dataset(client, "hb-incr", "v1/", count=100)
    cache = _cache(cache_root, s3_proxy, "hb-incr")
    cache.sync(v1)
    # v2: the same files, 2 changed and 3 added
    for key in ("images/0/doc-00000.png", "images/1/doc-00001.png"):
        client.put_object(Bucket="hb-incr", Key="v1/" + key, Body=b"changed " + key.encode())
    rows = [
        json.loads(line)
        for line in client.get_object(Bucket="hb-incr", Key="v1/manifest.jsonl")["Body"].read().splitlines()
    ]
    for r in rows[:2]:
        body = b"changed " + r["image"].encode()
        r.update(size=len(body), sha256=hashlib.sha256(body).hexdigest())
    for i in range(3):
        body = f"new {i}".encode()
        key = f"images/new/{i}.png"
        client.put_object(Bucket="hb-incr", Key="v1/" + key, Body=body)
        rows.append(
            {
                "id": f"new-{i}",
                "image": key,
                "text": "",
                "size": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
        )
    manifest = "".join(json.dumps(r) + "\n" for r in rows).encode()
    client.put_object(Bucket="hb-incr", Key="v1/manifest.jsonl", Body=manifest)
    v2 = dict(v1, manifest_sha256=hashlib.sha256(manifest).hexdigest(), sample_count=len(rows))
    s3_proxy.reset()
    result = cache.sync(v2)  # type: ignore[arg-type]
    assert result.fetched_files == 5
    assert result.reused_files == 98
    assert len(_image_gets(s3_proxy, "hb-incr")) == 5


def test_a_bucket_outside_the_allow_list_is_refused(s3_proxy: FaultProxy, cache_root: Path) -> None:
    ref = {
        "name": "x",
        "version": "1",
        "task": "ocr",
        "uri": "s3://elsewhere/p/",
        "manifest_sha256": "0" * 64,
        "sample_count": 1,
    }
    with pytest.raises(HostError, match="not allowed"):
        _cache(cache_root, s3_proxy, "hb-allowed").sync(ref)  # type: ignore[arg-type]
    assert s3_proxy.counts == {}


def test_the_task_side_lease_syncs_from_host_settings_and_holds_the_version(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = make_dataset(s3_server.client(), "hb-lease", "v1/", count=5)
    monkeypatch.setenv("HYPERBENCH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HYPERBENCH_S3_ENDPOINT_URL", s3_proxy.url)
    monkeypatch.setenv("HYPERBENCH_S3_BUCKETS", "other, hb-lease")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    cfg = host_config.load()
    ticks: list[SyncProgress] = []
    with dataset_lease(ref, cfg, on_progress=ticks.append) as path:
        assert path.is_relative_to(tmp_path / "var" / "cache" / "datasets")
        assert (path / "manifest.jsonl").is_file()
        lease = tmp_path / "var" / "cache" / "locks" / "docs" / f"{ref['manifest_sha256']}.lease"
        fd = os.open(lease, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
    fd = os.open(lease, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released with the block
    os.close(fd)
    assert ticks
    assert ticks[-1].phase == "done"


def test_registration_validates_an_s3_version_streaming_and_names_the_bad_lines(s3_server: SeaweedS3) -> None:
    client = s3_server.client()
    ref = make_dataset(client, "hb-validate", "good/", count=30)
    summary = validate_s3(ref["uri"], client, buckets=["hb-validate"])
    assert summary["manifest_sha256"] == ref["manifest_sha256"]
    assert summary["sample_count"] == 30
    assert summary["total_bytes"] == 30 * 2048
    assert (summary["name"], summary["task"]) == ("docs", "ocr")

    bad_lines: list[dict[str, Any]] = [
        {"id": "doc-0", "image": "images/0/doc-00000.png", "text": ""},  # duplicate id
        {"id": "gone", "image": "images/none.png", "text": ""},  # no such object
        {"id": "size", "image": "images/1/doc-00001.png", "text": "", "size": 7},  # wrong size
        {"id": "evil", "image": "../x", "text": ""},
        {"id": "abs", "image": "/etc/passwd", "text": ""},
    ]
    bad = make_dataset(client, "hb-validate", "bad/", count=3, extra_lines=bad_lines)
    client.put_object(
        Bucket="hb-validate",
        Key="bad/manifest.jsonl",
        Body=client.get_object(Bucket="hb-validate", Key="bad/manifest.jsonl")["Body"].read()
        + b"{not json\n",
    )
    with pytest.raises(ManifestError) as err:
        validate_s3(bad["uri"], client, buckets=["hb-validate"])
    text = "\n".join(err.value.problems)
    for n, what in [
        (4, "duplicate id"),
        (5, "does not exist"),
        (6, "the manifest says 7"),
        (7, "'..'"),
        (8, "absolute"),
        (9, "invalid JSON"),
    ]:
        assert f"line {n}: " in text, (n, what, text)
        assert what in text, (n, what, text)
    with pytest.raises(ManifestError, match="not one of the allowed"):
        validate_s3("s3://elsewhere/x/", client, buckets=["hb-validate"])


def test_a_large_object_is_fetched_in_parallel_ranges_and_verified(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, cache_root: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-large", "v1/", count=1, size=32 * 1024 * 1024 + 5, subdirs=1)
    s3_proxy.reset()
    s3_proxy.add(Rule("truncate", "doc-00000", times=1))  # one range of the first attempt is cut short
    s3_proxy.add(Rule("corrupt", "doc-00000", times=1))  # another has a flipped byte: sha256 catches it
    result = _cache(cache_root, s3_proxy, "hb-large").sync(ref)
    for row in map(json.loads, (result.path / "manifest.jsonl").read_bytes().splitlines()):
        assert hashlib.sha256((result.path / row["image"]).read_bytes()).hexdigest() == row["sha256"]
    gets = _image_gets(s3_proxy, "hb-large")
    assert gets == {"/hb-large/v1/images/0/doc-00000.png": 2 * 3}, "3 ranges, the object fetched twice"


def test_the_clean_up_at_worker_start_removes_a_killed_syncs_staging_but_not_a_live_ones(
    s3_proxy: FaultProxy, cache_root: Path
) -> None:
    from filelock import FileLock

    cache = _cache(cache_root, s3_proxy, "hb-clean")
    dead = cache_root / "staging" / f"docs-{'a' * 64}"
    live = cache_root / "staging" / f"docs-{'b' * 64}"
    for d in (dead, live):
        (d / "images").mkdir(parents=True)
        (d / "images" / "x.png.123.part").write_bytes(b"half")
    stranger = cache_root / "staging" / "not-a-version"
    stranger.mkdir()
    with FileLock(str(cache_root / "locks" / "docs" / f"{'b' * 64}.sync")):
        assert cache.cleanup_stale() == 1
    assert not dead.exists()
    assert (live / "images" / "x.png.123.part").read_bytes() == b"half", "a live sync's files stay"
    assert stranger.is_dir(), "only names the cache itself makes are touched"
