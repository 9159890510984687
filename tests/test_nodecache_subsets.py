"""A lease fetches what its stage reads: a shard its samples, evaluation the manifest, a report its gallery.

Against a real S3-protocol server (SeaweedFS) through tests/faultproxy.py, which counts the GETs.
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from faultproxy import FaultProxy
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from worker import contract
from worker.datasync import GALLERY_SIZE, gallery_candidates
from worker.nodecache import MARKER, CacheSettings, NodeCache, S3Settings, Selection

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "images" / "eval"))  # hb_stats, which the report imports
sys.path.insert(0, str(ROOT / "images" / "report"))

from hb_report import run_report  # noqa: E402
from hb_report.inputs import RunData  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _cache(root: Path, proxy: FaultProxy, bucket: str) -> NodeCache:
    return NodeCache(
        CacheSettings(root=root, budget_bytes=0, lock_timeout_s=60),
        S3Settings(
            endpoint_url=proxy.url,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            buckets=(bucket,),
            concurrency=8,
            max_attempts=3,
            backoff_base_s=0.05,
            backoff_max_s=0.2,
        ),
    )


def _images(vdir: Path) -> set[str]:
    return {str(p.relative_to(vdir)) for p in (vdir / "images").rglob("*") if p.is_file()}


def _manifest(vdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (vdir / "manifest.jsonl").read_text().splitlines()]


def test_four_hosts_running_four_shards_fetch_each_object_once_between_them(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-shards", "v1/", count=40, size=3000)
    seen: dict[str, int] = {}
    for shard in range(4):
        s3_proxy.reset()
        cache = _cache(tmp_path / f"host{shard}", s3_proxy, "hb-shards")
        with cache.lease(ref, select=Selection.of_shard(shard, 4)) as vdir:
            rows = _manifest(vdir)
            mine = {r["image"] for i, r in enumerate(rows) if contract.shard_of(i, 4) == shard}
            assert _images(vdir) == mine, "a shard's host holds exactly its own samples' images"
            assert (vdir / f"{MARKER}.shard-{shard}-of-4").is_file()
            assert not (vdir / MARKER).exists(), "a subset never claims the whole version"
        for path, n in s3_proxy.gets("/hb-shards/v1/images/").items():
            seen[path] = seen.get(path, 0) + n
    assert len(seen) == 40, "every image fetched once across the four hosts"
    assert set(seen.values()) == {1}, "every image fetched once across the four hosts"

    # The same shard again on the same host: the subset's seal holds, not one request.
    s3_proxy.reset()
    again = _cache(tmp_path / "host2", s3_proxy, "hb-shards").sync(ref, select=Selection.of_shard(2, 4))
    assert again.already_complete
    assert again.files == 10
    assert s3_proxy.counts == {}


def test_a_host_with_some_shards_fetches_only_the_rest_for_the_whole_version(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-grow", "v1/", count=30, size=1000)
    cache = _cache(tmp_path / "cache", s3_proxy, "hb-grow")
    s3_proxy.reset()
    first = cache.sync(ref, select=Selection.of_shard(0, 3))
    assert first.fetched_files == 10
    whole = cache.sync(ref)
    assert whole.fetched_files == 20, "the whole version fetches only what the shard did not"
    assert (whole.path / MARKER).is_file()
    assert len(s3_proxy.gets("/hb-grow/v1/images/")) == 30
    # Once the whole version is sealed, any shard of it is served by that seal, without a request.
    s3_proxy.reset()
    shard = cache.sync(ref, select=Selection.of_shard(1, 3))
    assert shard.already_complete
    assert s3_proxy.counts == {}


def test_a_damaged_file_of_a_sealed_shard_is_fetched_again(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-damage", "v1/", count=12, size=1500)
    cache = _cache(tmp_path / "cache", s3_proxy, "hb-damage")
    first = cache.sync(ref, select=Selection.of_shard(1, 2))
    victim = next(r["image"] for i, r in enumerate(_manifest(first.path)) if i % 2 == 1)
    (first.path / victim).chmod(0o644)
    (first.path / victim).write_bytes(b"not the image")
    s3_proxy.reset()
    again = cache.sync(ref, select=Selection.of_shard(1, 2))
    assert again.repaired_files == 1
    assert again.fetched_files == 1
    assert list(s3_proxy.gets("/hb-damage/v1/images/")) == [f"/hb-damage/v1/{victim}"]


def test_evaluation_reads_the_manifest_only_and_a_report_its_gallery_only(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, tmp_path: Path
) -> None:
    ref = make_dataset(s3_server.client(), "hb-parts", "v1/", count=20, size=1200)
    cache = _cache(tmp_path / "cache", s3_proxy, "hb-parts")
    s3_proxy.reset()
    with cache.lease(ref, select=Selection.manifest()) as vdir:
        assert (vdir / "manifest.jsonl").is_file()
        assert (vdir / "dataset.json").is_file()
        assert _images(vdir) == set()
    assert s3_proxy.gets("/hb-parts/v1/images/") == {}
    with cache.lease(ref, select=Selection.of_ids({"doc-3", "doc-17"})) as vdir:
        assert _images(vdir) == {"images/3/doc-00003.png", "images/1/doc-00017.png"}
    assert len(s3_proxy.gets("/hb-parts/v1/images/")) == 2


def _per_sample(rng: random.Random, n: int, metric: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(n):
        roll = rng.random()
        value: Any = rng.choice([0.0, 0.5, 1.0, round(rng.random(), 2)])
        if roll < 0.1:
            value = None
        elif roll < 0.15:
            value = math.nan
        rows.append({"id": f"s{i}", metric: value})
    return rows


@pytest.mark.parametrize("metric", ["cer", "anls"])
def test_the_gallery_candidates_hold_every_sample_the_report_shows(tmp_path: Path, metric: str) -> None:
    rng = random.Random(7)
    metrics = tmp_path / "metrics.json"
    per_sample = tmp_path / "per_sample.jsonl"
    metrics.write_text(json.dumps({"primary_metric": metric, "metrics": {metric: {"mean": 0.5}}}))
    for trial in range(200):
        rows = _per_sample(rng, rng.randint(0, 40), metric)
        per_sample.write_text("".join(json.dumps(r) + "\n" for r in rows))
        name, lower_better = run_report.primary_metric(json.loads(metrics.read_text()))
        data = RunData(key="r", metrics={}, run={}, per_sample=rows, predictions=[])
        shown = {str(r["id"]) for r in run_report.worst_samples(data, name, lower_better)}
        candidates = gallery_candidates(metrics, per_sample)
        assert shown <= candidates, (trial, shown - candidates)
        assert len(candidates) <= 3 * GALLERY_SIZE
