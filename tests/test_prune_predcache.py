"""Prediction cache eviction: ``manage.py prune_predcache`` on a file:// store and on S3
(SeaweedFS), and the host's side of it: a hit renews an entry's time, and an entry pruned
under a reading run is a miss, not an error."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, scratch_bucket

from tests.test_predcache import _spec
from worker import predcache
from worker.storage import Artifacts, FileStore, S3Store, S3StoreSettings

DAY = 86400.0


def _key(n: int) -> str:
    return f"{n:02x}" * 32


def _line(sid: str) -> dict[str, Any]:
    return {"id": sid, "prediction": f"p-{sid}", "latency_ms": 1.0, "error": None}


def _cache(store: Artifacts, uri: str, work: Path, run_id: int = 1) -> predcache.PredictionCache:
    work.mkdir(parents=True, exist_ok=True)
    return predcache.PredictionCache(store, _spec(run_id, uri=uri), work)


def _prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_predcache", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def file_cache(settings: Any, tmp_path: Path) -> tuple[Artifacts, str, Path]:
    """The web side's artifacts in tmp_path/artifacts; the cache at its default place under them."""
    root = tmp_path / "artifacts"
    root.mkdir()
    settings.HYPERBENCH_ARTIFACTS_URI = root.as_uri() + "/"
    settings.HYPERBENCH_PREDICTION_CACHE_URI = ""
    return Artifacts(FileStore([root])), root.as_uri() + "/cache/predictions/", root / "cache" / "predictions"


def _age(path: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(path, (t, t))


def test_prune_deletes_entries_unused_for_n_days_and_says_what_it_freed(
    file_cache: tuple[Artifacts, str, Path], tmp_path: Path
) -> None:
    store, uri, root = file_cache
    writer = _cache(store, uri, tmp_path / "work")
    for n, days in ((1, 40), (2, 10), (3, 0)):
        writer.put(_key(n), _line(f"s{n}"), shard=0, attempt=1)
        _age(root / _key(n)[:2] / f"{_key(n)}.json", days)
    old = root / _key(1)[:2] / f"{_key(1)}.json"
    size = old.stat().st_size
    # A writer that died left a .part behind, long ago; a file not of the layout is never touched.
    leftover = root / _key(4)[:2] / f"{_key(4)}.json.123.part"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{")
    _age(leftover, 40)
    stranger = root / "README.txt"
    stranger.write_text("not an entry")
    _age(stranger, 400)

    dry = _prune("--older-than-days", "30", "--dry-run")

    assert f"would remove {old.as_uri()} ({size} bytes, unused 40.0 days)" in dry
    assert f"would remove 2 of 4 entries, {size + 1} bytes freed (dry run)" in dry
    assert old.is_file()
    assert leftover.is_file()

    out = _prune("--older-than-days", "30")

    assert f"removed {old.as_uri()} ({size} bytes, unused 40.0 days)" in out
    assert f"removed {leftover.as_uri()} (1 bytes, unused 40.0 days)" in out
    assert f"{uri}: removed 2 of 4 entries, {size + 1} bytes freed; 2 entries" in out
    assert not old.exists()
    assert not leftover.exists()
    assert stranger.is_file()
    found = _cache(store, uri, tmp_path / "reader", run_id=2).lookup(
        {"s1": _key(1), "s2": _key(2), "s3": _key(3)}
    )
    assert sorted(found.lines) == ["s2", "s3"]  # the pruned one is a miss: inferred again
    assert "removed 0 of 2 entries, 0 bytes freed" in _prune("--older-than-days", "30")


def test_a_byte_budget_then_removes_the_least_recently_used(
    file_cache: tuple[Artifacts, str, Path], tmp_path: Path
) -> None:
    store, uri, root = file_cache
    writer = _cache(store, uri, tmp_path / "work")
    paths = {}
    for n, days in ((1, 3), (2, 2), (3, 1)):
        writer.put(_key(n), _line(f"s{n}"), shard=0, attempt=1)
        paths[n] = root / _key(n)[:2] / f"{_key(n)}.json"
        _age(paths[n], days)
    sizes = {n: p.stat().st_size for n, p in paths.items()}

    out = _prune("--older-than-days", "30", "--max-bytes", str(sizes[2] + sizes[3]))

    assert (
        f"removed 1 of 3 entries, {sizes[1]} bytes freed; 2 entries ({sizes[2] + sizes[3]} bytes) kept" in out
    )
    assert [n for n, p in paths.items() if p.exists()] == [2, 3]
    with pytest.raises(CommandError, match="--max-bytes must be 0 or more"):
        _prune("--older-than-days", "1", "--max-bytes", "-1")


def test_a_hit_renews_an_old_entrys_time_so_pruning_by_age_keeps_what_runs_use(
    file_cache: tuple[Artifacts, str, Path], tmp_path: Path
) -> None:
    store, uri, root = file_cache
    writer = _cache(store, uri, tmp_path / "work")
    writer.put(_key(1), _line("s1"), shard=0, attempt=1)
    writer.put(_key(2), _line("s2"), shard=0, attempt=1)
    used, fresh = (root / _key(n)[:2] / f"{_key(n)}.json" for n in (1, 2))
    _age(used, 40)
    _age(fresh, 0.5)
    half_a_day_ago = fresh.stat().st_mtime

    found = _cache(store, uri, tmp_path / "reader", run_id=2).lookup({"s1": _key(1), "s2": _key(2)})

    assert found.hits == 2
    assert time.time() - used.stat().st_mtime < DAY  # renewed: it was served
    assert fresh.stat().st_mtime == half_a_day_ago  # under a day old: no write for it
    assert "removed 0 of 2 entries" in _prune("--older-than-days", "30")


class _PrunedUnderTheReader(FileStore):
    """A store where the prune runs between the run's look-up of an entry and its read."""

    def modified(self, uri: str) -> float | None:
        when = super().modified(uri)
        call_command("prune_predcache", "--older-than-days", "0", stdout=io.StringIO())
        return when


def test_an_entry_pruned_while_a_run_reads_it_is_a_miss_and_the_run_goes_on(
    file_cache: tuple[Artifacts, str, Path], tmp_path: Path
) -> None:
    store, uri, root = file_cache
    _cache(store, uri, tmp_path / "work").put(_key(1), _line("s1"), shard=0, attempt=1)
    _age(root / _key(1)[:2] / f"{_key(1)}.json", 1)
    racing = Artifacts(_PrunedUnderTheReader([tmp_path / "artifacts"]))

    found = _cache(racing, uri, tmp_path / "reader", run_id=2).lookup({"s1": _key(1)})

    assert found.lines == {}
    assert (found.hits, found.resumed) == (0, 0)
    assert not list(root.rglob("*.json"))


def test_the_cache_must_be_where_the_web_side_may_reach_it(settings: Any, tmp_path: Path) -> None:
    settings.HYPERBENCH_ARTIFACTS_URI = (tmp_path / "artifacts").as_uri() + "/"
    settings.HYPERBENCH_PREDICTION_CACHE_URI = (tmp_path / "elsewhere").as_uri() + "/"

    with pytest.raises(CommandError, match="is not under HYPERBENCH_ARTIFACTS_URI"):
        _prune("--older-than-days", "30")


# --- s3:// ------------------------------------------------------------------------------------


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[str]:
    with scratch_bucket(s3_server, "hb-prune") as name:
        yield name


def test_prune_and_renewal_on_an_s3_cache(
    settings: Any, s3_server: SeaweedS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_server.endpoint
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_SESSION_TOKEN = ""
    settings.HYPERBENCH_ARTIFACTS_S3_ROOTS = []
    settings.HYPERBENCH_ARTIFACTS_URI = f"s3://{bucket}/hb/"
    settings.HYPERBENCH_PREDICTION_CACHE_URI = ""
    uri = f"s3://{bucket}/hb/cache/predictions/"
    host = S3Store(
        S3StoreSettings(
            roots=(f"s3://{bucket}/hb/",),
            endpoint_url=s3_server.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
        )
    )
    store = Artifacts(FileStore([tmp_path]), host)
    writer = _cache(store, uri, tmp_path / "work")
    for n in (1, 2, 3):
        writer.put(_key(n), _line(f"s{n}"), shard=0, attempt=1)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="hb/cache/predictions/README.txt", Body=b"not an entry")
    sizes = {
        o["Key"]: o["Size"] for o in client.list_objects_v2(Bucket=bucket, Prefix="hb/cache/")["Contents"]
    }
    total = sum(v for k, v in sizes.items() if k.endswith(".json"))

    # A hit on an entry older than TOUCH_AFTER_S (here: any) copies it onto itself, bytes unchanged.
    monkeypatch.setattr(predcache, "TOUCH_AFTER_S", -1.0)
    found = _cache(store, uri, tmp_path / "reader", run_id=2).lookup({"s1": _key(1)})
    assert found.hits == 1
    key1 = f"hb/cache/predictions/{_key(1)[:2]}/{_key(1)}.json"
    assert "hb-touched" in client.head_object(Bucket=bucket, Key=key1)["Metadata"]
    assert json.loads(client.get_object(Bucket=bucket, Key=key1)["Body"].read())["line"] == _line("s1")

    assert "removed 0 of 3 entries, 0 bytes freed; 3 entries" in _prune("--older-than-days", "1")
    assert f"would remove 3 of 3 entries, {total} bytes freed (dry run)" in _prune(
        "--older-than-days", "0", "--dry-run"
    )
    out = _prune("--older-than-days", "0")

    assert f"removed s3://{bucket}/{key1} (" in out
    assert f"{uri}: removed 3 of 3 entries, {total} bytes freed; 0 entries (0 bytes) kept" in out
    left = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="hb/")["Contents"]]
    assert left == ["hb/cache/predictions/README.txt"]
    assert _cache(store, uri, tmp_path / "again", run_id=3).lookup({"s1": _key(1)}).lines == {}
