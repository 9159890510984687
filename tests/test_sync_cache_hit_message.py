"""A node-cache hit is reported as a hit, never as a sync "at 0.0 MB/s" (``worker.stagekit.sync_progress``).

The ticks come from a real node cache against a real S3-protocol server (SeaweedFS): a cold
sync fetches every file and reports its rate; a second sync of the same version fetches
nothing and says the dataset was already in the host's cache, naming the files it checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from worker import events, stagekit
from worker.nodecache import CacheSettings, NodeCache, S3Settings, SyncProgress

pytestmark = pytest.mark.timeout(300)
BUCKET = "hb-cachehit"


def _emitted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    def emit(run_id: int, kind: str, stage: str, **fields: Any) -> None:
        sent.append({"run_id": run_id, "kind": kind, "stage": stage, **fields})

    monkeypatch.setattr(events, "emit", emit)
    return sent


def test_a_cold_sync_reports_its_rate_and_a_cache_hit_says_so(
    s3_server: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _emitted(monkeypatch)
    ref = make_dataset(s3_server.client(), BUCKET, "hit/v1/", count=6, size=3000, name="hits")
    cache = NodeCache(
        CacheSettings(root=tmp_path / "cache", budget_bytes=10**9, lock_timeout_s=60),
        S3Settings(
            endpoint_url=s3_server.endpoint,
            region=REGION,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            buckets=(BUCKET,),
        ),
    )

    cold = cache.sync(ref, on_progress=stagekit.sync_progress(7, 0))
    assert cold.fetched_files == 6
    last = sent[-1]
    assert (last["run_id"], last["kind"], last["stage"]) == (7, "progress", "sync")
    assert last["data"]["phase"] == "done"
    assert last["data"]["fetched_files"] == 6
    assert last["message"].startswith("dataset sync: 6/6 files, ")
    assert last["message"].endswith(" MB/s")

    sent.clear()
    warm = cache.sync(ref, on_progress=stagekit.sync_progress(7, 0))
    assert warm.fetched_files == 0
    assert warm.already_complete
    assert sent, "a cache hit still reports its done tick"
    done = [e for e in sent if e["data"]["phase"] == "done"]
    assert len(done) == 1
    assert done == sent[-1:]
    assert done[0]["data"]["fetched_files"] == 0
    assert done[0]["data"]["files_total"] == 6
    assert done[0]["message"] == "dataset already in this host's cache (6 files checked)"
    assert all("MB/s" not in e["message"] for e in sent)


@pytest.mark.parametrize(
    ("tick", "message"),
    [
        (SyncProgress("done", 4, 4, 400, 400, 0.0), "dataset already in this host's cache (4 files checked)"),
        (SyncProgress("verify", 2, 4, 200, 400, 0.0), "dataset sync: 2/4 files, 0.0 MB/s"),
        (SyncProgress("download", 3, 4, 300, 400, 2.5e6, 1, 100), "dataset sync: 3/4 files, 2.5 MB/s"),
        (SyncProgress("done", 4, 4, 400, 400, 1.2e6, 1, 100), "dataset sync: 4/4 files, 1.2 MB/s"),
    ],
)
def test_only_a_finished_sync_that_fetched_nothing_is_called_a_cache_hit(
    tick: SyncProgress, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = _emitted(monkeypatch)
    stagekit.sync_progress(3, None)(tick)
    assert [e["message"] for e in sent] == [message]
    assert sent[0]["data"]["fetched_files"] == tick.fetched_files  # the counts are unchanged
