"""The prediction cache's key and its rules, on a file:// store (no Docker, no DB)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from worker import contract, predcache
from worker.storage import Artifacts, FileStore

DIGEST = "sha256:" + "b" * 64
IMAGE_SHA = "c" * 64


def _spec(run_id: int = 7, **cache: Any) -> contract.RunSpec:
    spec: dict[str, Any] = {
        "spec_version": 1,
        "run_id": run_id,
        "dataset": {
            "name": "d",
            "version": "1",
            "task": "ocr",
            "uri": "file:///d/",
            "manifest_sha256": "0" * 64,
            "sample_count": 3,
        },
        "model": {
            "name": "m",
            "image": "i",
            "digest": DIGEST,
            "requires_gpu": False,
            "gpus": 0,
            "network": False,
        },
        "params": {"mode": "echo"},
        "prompt": "",
        "shards": 1,
        "artifacts_uri": f"file:///a/runs/{run_id}/",
        "eval_image": {"image": "e", "digest": DIGEST},
        "report_image": {"image": "r", "digest": DIGEST},
        "limits": {"timeout_s": 1, "memory_mb": 1, "cpus": 1.0, "pids": 1},
        "summary": {},
        "cache": {"uri": "", "reuse": True, "cacheable": True, "scope": run_id, "lineage": [run_id]},
    }
    spec["cache"].update(cache)
    return spec  # type: ignore[return-value]


def _key(spec: contract.RunSpec, sid: str = "s1", image: str = IMAGE_SHA, question: object = None) -> str:
    return predcache.cache_key(spec, sid, image, question)


def test_the_key_is_the_sha256_of_a_canonical_json_of_what_can_change_a_prediction() -> None:
    spec = _spec()
    parts = predcache.key_parts(spec, "s1", IMAGE_SHA, None)

    assert parts == {
        "v": 1,
        "contract": contract.CONTRACT_VERSION,
        "image_digest": DIGEST,
        "endpoint": None,
        "params": {"mode": "echo"},
        "prompt": "",
        "task": "ocr",
        "sample": {"id": "s1", "image_sha256": IMAGE_SHA, "question": None},
        "scope": None,
    }
    assert predcache.canonical(parts).startswith(b'{"contract":1,"endpoint":null,')
    assert len(_key(spec)) == 64


def test_the_run_the_shard_count_and_the_artifacts_are_not_in_the_key() -> None:
    a, b = _spec(run_id=1), _spec(run_id=2)
    b["shards"] = 4
    b["summary"] = {"anything": 1}

    assert _key(a) == _key(b)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["model"].update(digest="sha256:" + "d" * 64),
        lambda s: s.update(params={"mode": "slow"}),
        lambda s: s.update(prompt="Read it."),
        lambda s: s["dataset"].update(task="vqa"),
        lambda s: s["model"].update(
            endpoint={
                "base_url": "http://x/v1",
                "model": "m2",
                "api_key_env": "",
                "max_concurrency": 1,
                "timeout_s": 1,
            }
        ),
        lambda s: s["cache"].update(cacheable=False),
    ],
    ids=["image digest", "params", "prompt", "task", "endpoint", "not cacheable"],
)
def test_each_part_of_the_spec_changes_the_key(change: Any) -> None:
    spec = _spec()
    changed = copy.deepcopy(spec)
    change(changed)

    assert _key(spec) != _key(changed)


def test_the_sample_id_its_image_bytes_and_its_question_change_the_key() -> None:
    spec = _spec()

    assert len({_key(spec), _key(spec, sid="s2"), _key(spec, image="e" * 64), _key(spec, question="Q?")}) == 4


def test_an_endpoint_key_is_not_in_the_key() -> None:
    ep = {"base_url": "http://x/v1", "model": "m2", "api_key_env": "A", "max_concurrency": 1, "timeout_s": 1}
    a, b = _spec(), _spec()
    a["model"]["endpoint"] = dict(ep)  # type: ignore[typeddict-item]
    b["model"]["endpoint"] = {**ep, "api_key_env": "B", "max_concurrency": 8}  # type: ignore[typeddict-item]

    assert _key(a) == _key(b)


def test_the_image_hash_is_the_declared_one_or_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"bytes")

    assert predcache.image_sha256(tmp_path, {"image": "a.png", "sha256": IMAGE_SHA}) == IMAGE_SHA
    computed = predcache.image_sha256(tmp_path, {"image": "a.png"})
    assert computed == hashlib.sha256(b"bytes").hexdigest()
    (tmp_path / "a.png").write_bytes(b"other bytes")
    assert predcache.image_sha256(tmp_path, {"image": "a.png"}) != computed


@pytest.fixture
def store(tmp_path: Path) -> Artifacts:
    return Artifacts(FileStore([tmp_path]))


def _cache(store: Artifacts, tmp_path: Path, run_id: int, **cache: Any) -> predcache.PredictionCache:
    uri = (tmp_path / "cache").as_uri() + "/"
    work = tmp_path / f"work-{run_id}"
    work.mkdir(exist_ok=True)
    return predcache.PredictionCache(store, _spec(run_id, uri=uri, **cache), work)


def _line(sid: str, error: str | None = None) -> dict[str, Any]:
    return {"id": sid, "prediction": f"p-{sid}", "latency_ms": 3.0, "error": error}


def test_a_run_takes_another_runs_entries_and_says_where_they_came_from(
    store: Artifacts, tmp_path: Path
) -> None:
    first = _cache(store, tmp_path, 1)
    first.put("k1", _line("s1"), shard=0, attempt=1)

    found = _cache(store, tmp_path, 2).lookup({"s1": "k1", "s2": "k2"})

    assert found.hits == 1
    assert found.resumed == 0
    assert found.runs == {1}
    assert found.lines == {"s1": {**_line("s1"), "cached": True, "cached_from_run": 1}}


def test_a_runs_own_entries_are_resumed_ones(store: Artifacts, tmp_path: Path) -> None:
    run = _cache(store, tmp_path, 3)
    run.put("k1", _line("s1"), shard=0, attempt=1)

    found = run.lookup({"s1": "k1"})

    assert (found.hits, found.resumed) == (0, 1)
    assert found.lines["s1"]["resumed"] is True


def test_without_reuse_a_run_takes_only_its_own_and_its_lineages_entries(
    store: Artifacts, tmp_path: Path
) -> None:
    _cache(store, tmp_path, 1).put("k1", _line("s1"), shard=0, attempt=1)
    _cache(store, tmp_path, 4).put("k2", _line("s2"), shard=0, attempt=1)
    _cache(store, tmp_path, 5).put("k3", _line("s3"), shard=0, attempt=1)

    found = _cache(store, tmp_path, 5, reuse=False, lineage=[5, 4]).lookup(
        {"s1": "k1", "s2": "k2", "s3": "k3"}
    )

    assert sorted(found.lines) == ["s2", "s3"]
    assert (found.hits, found.resumed) == (1, 1)


def test_errors_are_never_cached(store: Artifacts, tmp_path: Path) -> None:
    run = _cache(store, tmp_path, 1)
    run.put("k1", _line("s1", error="boom"), shard=0, attempt=1)

    assert not list((tmp_path / "cache").rglob("*.json"))


def test_an_entry_under_another_key_or_for_another_sample_is_not_served(
    store: Artifacts, tmp_path: Path
) -> None:
    run = _cache(store, tmp_path, 1)
    run.put("k1", _line("s1"), shard=0, attempt=1)
    entry = tmp_path / "cache" / "k1"[:2] / "k1.json"
    moved = tmp_path / "cache" / "k2"[:2] / "k2.json"
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_text(entry.read_text())

    assert _cache(store, tmp_path, 2).lookup({"s1": "k2", "s9": "k1"}).lines == {}


def test_a_cache_off_spec_neither_looks_up_nor_writes(store: Artifacts, tmp_path: Path) -> None:
    spec = _spec(1)
    del spec["cache"]
    off = predcache.PredictionCache(store, spec, tmp_path)
    off.put("k1", _line("s1"), shard=0, attempt=1)

    assert not off.enabled
    assert off.lookup({"s1": "k1"}).lines == {}


def test_the_tail_caches_each_validated_line_once_as_it_lands(store: Artifacts, tmp_path: Path) -> None:
    run = _cache(store, tmp_path, 1)
    out = tmp_path / "predictions.jsonl"
    tail = predcache.Tail(run, out, {"s1": "k1", "s2": "k2", "s3": "k3"}, shard=0, attempt=1)
    assert tail.drain() == 0  # no file yet

    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(_line("s1")) + "\n")
        f.write(json.dumps(_line("s2", error="bad")) + "\n")  # an error: not cached
        f.write("not json\n")
        f.write(json.dumps(_line("elsewhere")) + "\n")  # not sent to this attempt
        f.write(json.dumps(_line("s3"))[:10])  # torn: not yet
    assert tail.drain() == 1
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(_line("s3"))[10:] + "\n")
        f.write(json.dumps({**_line("s1"), "prediction": "second"}) + "\n")  # a repeat: the first stands
    assert tail.drain() == 1

    found = _cache(store, tmp_path, 2).lookup({"s1": "k1", "s2": "k2", "s3": "k3"})
    assert sorted(found.lines) == ["s1", "s3"]
    assert found.lines["s1"]["prediction"] == "p-s1"
