"""Runs whose artifact store and datasets are s3:// on a real S3 server, through every real part.

API (in-process DRF) -> Redis -> host worker process (its artifact store on the
local SeaweedFS) -> Docker (the fast ``testkit`` model) -> control worker -> DB;
the API's links are then fetched over HTTP with requests, as a browser would.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from apps.runs import dispatch
from apps.runs.models import Run, RunEvent, RunShard
from hyperbench_web.devstack import Stack
from tests.conftest import (
    IMAGE_VERSION,
    create_experiment,
    echo_dataset,
    register_model,
    start_run,
    streamed,
    wait_for_run,
    wait_hosts,
)
from worker import contract
from worker.nodecache import MARKER

pytestmark = pytest.mark.docker

BUCKET = "hb-e2e-artifacts"
DATASETS = "hb-e2e-datasets"  # S3 datasets, synced into the host's node cache


def _restart_host(stack: Stack, env: dict[str, str]) -> None:
    """Restart the suite's host worker with ``env`` (its log moves aside, so readiness is its own)."""
    stack.stop(("host",))
    log = stack.log_dir / "host.log"
    if log.exists():
        log.rename(stack.log_dir / f"host.{time.time_ns()}.log")
    stack.env.clear()
    stack.env.update(env)
    stack.start(("host",))
    stack.wait_workers(("host",), timeout_s=90)


@pytest.fixture(scope="module")
def s3_artifacts(workers: Stack, s3_server: SeaweedS3) -> Iterator[str]:
    """The host worker restarted with an s3:// artifact store; yields the artifacts URI to use.

    Its S3 endpoint and keys are the ones S3 datasets use; only the prefix yielded
    here is on its allow-list. The worker's former environment is restored after.
    """
    client = s3_server.client()
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=BUCKET)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}/"
    saved = dict(workers.env)
    _restart_host(
        workers,
        {
            **saved,
            "HYPERBENCH_S3_ENDPOINT_URL": s3_server.endpoint,
            "HYPERBENCH_S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "HYPERBENCH_ARTIFACTS_S3_ROOTS": f"s3://{BUCKET}/{prefix}",
            "HYPERBENCH_ARTIFACTS_S3_MAX_ATTEMPTS": "4",
            "HYPERBENCH_S3_BUCKETS": DATASETS,
            "HYPERBENCH_S3_MAX_ATTEMPTS": "3",
        },
    )
    try:
        yield f"s3://{BUCKET}/{prefix}"
    finally:
        _restart_host(workers, saved)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def web_s3(settings: Any, platform: Stack, s3_server: SeaweedS3, s3_artifacts: str) -> str:
    """The web side writing new runs' artifacts to S3, and able to presign links to them."""
    settings.HYPERBENCH_ARTIFACTS_URI = s3_artifacts
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_server.endpoint
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_SESSION_TOKEN = ""
    settings.HYPERBENCH_ARTIFACTS_URL_TTL_S = 300
    settings.HYPERBENCH_S3_BUCKETS = [DATASETS]
    return s3_artifacts


def _echo_experiment(
    staff: APIClient, owner: APIClient, images: dict[str, str], ds: Path, *, count: int, seed: int
) -> int:
    dataset_id = echo_dataset(staff, owner, images, ds, count=count, seed=seed)
    return create_experiment(owner, "echo", dataset_id, name="echo")


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def _get(s3_server: SeaweedS3, uri: str) -> bytes:
    bucket, key = _split(uri)
    return bytes(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def _keys_under(s3_server: SeaweedS3, uri: str) -> set[str]:
    bucket, key = _split(uri)
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    return {obj["Key"][len(key) :] for page in pages for obj in page.get("Contents", [])}


def test_a_run_on_an_s3_artifact_store_publishes_attempt_keyed_artifacts_the_api_links_to(
    web_s3: str,
    s3_server: SeaweedS3,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    exp = _echo_experiment(as_staff, as_alice, images, roots["datasets"] / "s3-art" / "1", count=5, seed=17)

    data = wait_for_run(as_alice, start_run(as_alice, exp, shards=2), timeout_s=300)

    assert data["state"] == "succeeded", data["error_reason"]
    run = Run.objects.get(pk=data["id"])
    base = f"{web_s3}runs/{run.pk}/"
    assert run.spec["artifacts_uri"] == base
    # Everything in the bucket, keyed by run, shard and attempt; nothing in the old unkeyed layout.
    assert _keys_under(s3_server, base) == {
        contract.shard_predictions_key(0, 1),
        contract.shard_predictions_key(1, 1),
        contract.log_key("infer", 1, 0),
        contract.log_key("infer", 1, 1),
        contract.log_key("evaluate", 1),
        contract.log_key("report", 1),
        *contract.RUN_ARTIFACTS.values(),
    }
    shards = list(RunShard.objects.filter(run=run).order_by("index"))
    assert [s.predictions_uri for s in shards] == [
        base + contract.shard_predictions_key(k, 1) for k in (0, 1)
    ]
    assert run.predictions_uri == base + "predictions.jsonl"
    assert run.report_uri == base + "report.html"
    merged = [json.loads(x) for x in _get(s3_server, run.predictions_uri).splitlines()]
    assert sorted(p["id"] for p in merged) == sorted({p["id"] for p in merged})
    assert len(merged) == 5
    assert not (roots["artifacts"] / "runs" / str(run.pk)).exists()

    r = as_alice.get(data["artifacts_url"])

    assert r.status_code == 200, r.content
    links = r.json()["artifacts"]
    assert set(links) == {
        "predictions",
        "metrics",
        "per_sample",
        "report",
        "shards/0/predictions",
        "shards/1/predictions",
        "logs/infer/shard-0/attempt-1.log",
        "logs/infer/shard-1/attempt-1.log",
        "logs/evaluate/attempt-1.log",
        "logs/report/attempt-1.log",
    }
    expected = {
        **{name: base + key for name, key in contract.RUN_ARTIFACTS.items()},
        **{f"shards/{s.index}/predictions": s.predictions_uri for s in shards},
        **{name: base + name for name in links if name.startswith("logs/")},
    }
    for name, url in links.items():
        got = requests.get(url, timeout=10)
        assert got.status_code == 200, (name, got.text[:300])
        assert got.content == _get(s3_server, expected[name]), name
    assert json.loads(requests.get(links["metrics"], timeout=10).content)["n"] == 5
    report = as_alice.get(f"/api/v1/runs/{run.pk}/report/")
    assert report.status_code == 200
    assert b"<svg" in streamed(report)


def test_a_retried_shard_is_evaluated_from_its_own_attempt_never_mixed_with_an_earlier_one(
    web_s3: str,
    workers: Stack,
    s3_server: SeaweedS3,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    exp = _echo_experiment(as_staff, as_alice, images, roots["datasets"] / "s3-retry" / "1", count=4, seed=23)
    # The host is down while the run starts: attempt 1's message waits in Redis.
    workers.stop(("host",))
    run_id = start_run(as_alice, exp)
    run = Run.objects.get(pk=run_id)
    base = f"{web_s3}runs/{run_id}/"
    ids = [json.loads(x)["id"] for x in (roots["datasets"] / "s3-retry" / "1" / "manifest.jsonl").open()]
    # Attempt 1 had published a complete output of its own, then its host went quiet and the
    # reconciler moved the shard on to attempt 2 (the same conditional update runs_reconcile makes).
    stale = "".join(
        json.dumps({"id": i, "prediction": "from attempt 1", "latency_ms": 0.0, "error": None}) + "\n"
        for i in ids
    ).encode()
    bucket, key = _split(base + contract.shard_predictions_key(0, 1))
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=stale)
    moved = RunShard.objects.filter(run=run, index=0, attempt=1).update(
        attempt=2, state=RunShard.State.PENDING
    )
    assert moved == 1
    # Sent as the reconciler sends it, under its task id: the host's heartbeats then say it holds
    # attempt 2, so the reconciler's last resort (a quiet shard no host holds) leaves it alone.
    dispatch.send_shard(run.spec, 0, 2, contract.Queue.CPU)
    log = workers.log_dir / "host.log"
    log.rename(workers.log_dir / f"host.{time.time_ns()}.log")
    workers.start(("host",))
    workers.wait_workers(("host",), timeout_s=90)

    data = wait_for_run(as_alice, run_id, timeout_s=300)

    assert data["state"] == "succeeded", data["error_reason"]
    shard = RunShard.objects.get(run=run, index=0)
    assert shard.attempt == 2
    assert shard.predictions_uri == base + contract.shard_predictions_key(0, 2)
    merged = [json.loads(x) for x in _get(s3_server, base + "predictions.jsonl").splitlines()]
    assert sorted(p["id"] for p in merged) == sorted(ids)
    assert all(p["prediction"] == p["id"] for p in merged), "attempt 1's predictions were evaluated"
    assert _get(s3_server, base + contract.shard_predictions_key(0, 1)) == stale  # left as it was
    # Attempt 1's redelivered message re-announced its output; the control side recorded it and moved on.
    announced = [
        str((ev.data or {}).get("predictions_uri"))
        for ev in RunEvent.objects.filter(run=run, kind="shard_succeeded").order_by("id")
    ]
    assert sorted(announced) == sorted(
        [base + contract.shard_predictions_key(0, 1), base + contract.shard_predictions_key(0, 2)]
    )
    metrics = Run.objects.get(pk=run_id).metrics
    assert metrics is not None
    assert metrics["n"] == 4


# --- datasets on S3: registered through the API, synced by the host before the run ------------


def _s3_echo_experiment(
    s3_server: SeaweedS3, staff: APIClient, owner: APIClient, images: dict[str, str], prefix: str, count: int
) -> tuple[int, contract.DatasetRef]:
    ref = make_dataset(s3_server.client(), DATASETS, prefix, count=count, size=3000, name=prefix.strip("/"))
    register_model(staff, "echo", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    r = owner.post("/api/v1/datasets/", {"uri": ref["uri"]}, format="json")
    assert r.status_code == 201, r.content
    assert r.json()["sample_count"] == count
    assert r.json()["total_bytes"] == count * 3000
    return create_experiment(owner, "echo", r.json()["id"], name="echo on s3"), ref


def test_a_run_on_an_s3_dataset_syncs_it_into_the_node_cache_first_and_succeeds(
    web_s3: str,
    workers: Stack,
    s3_server: SeaweedS3,
    as_staff: APIClient,
    as_alice: APIClient,
    images: dict[str, str],
) -> None:
    exp, ref = _s3_echo_experiment(s3_server, as_staff, as_alice, images, "scans-ok/", count=12)

    data = wait_for_run(as_alice, start_run(as_alice, exp, shards=2), timeout_s=300)

    assert data["state"] == "succeeded", data["error_reason"]
    assert data["metrics"]["n"] == 12
    vdir = workers.var_dir / "cache" / "datasets" / ref["name"] / ref["manifest_sha256"]
    for shard in (0, 1):
        assert (vdir / f"{MARKER}.shard-{shard}-of-2").is_file(), "each shard's part is sealed"
    assert len(list((vdir / "images").rglob("*.png"))) == 12
    # Two shards, one host: each syncs its own six samples' objects; evaluation (shard null)
    # reads the manifest only.
    ticks = {t["shard"]: t for t in data["sync"] if t["shard"] is not None}
    assert sorted(ticks) == [0, 1], data["sync"]
    assert all(t["phase"] == "done" for t in ticks.values()), data["sync"]
    assert [t["fetched_files"] for t in ticks.values()] == [6, 6], data["sync"]


def test_a_dataset_that_lost_an_object_fails_the_run_clearly_and_mounts_nothing(
    web_s3: str,
    workers: Stack,
    s3_server: SeaweedS3,
    as_staff: APIClient,
    as_alice: APIClient,
    images: dict[str, str],
) -> None:
    exp, ref = _s3_echo_experiment(s3_server, as_staff, as_alice, images, "scans-gone/", count=6)
    # Registered while complete; then someone deletes an image from the bucket.
    s3_server.client().delete_object(Bucket=DATASETS, Key="scans-gone/images/3/doc-00003.png")

    data = wait_for_run(as_alice, start_run(as_alice, exp), timeout_s=300)

    assert data["state"] == "failed"
    assert "doc-00003.png" in data["error_reason"], data["error_reason"]
    assert "does not exist" in data["error_reason"], data["error_reason"]
    vdir = workers.var_dir / "cache" / "datasets" / ref["name"] / ref["manifest_sha256"]
    assert not (vdir / MARKER).exists(), "an incomplete version is never sealed"
    assert data["shards"][0]["state"] == "failed"
    assert not Run.objects.get(pk=data["id"]).predictions_uri, "nothing ran on a partial dataset"


# Last in the module: from here on the module's stack has three host workers.
def test_an_s3_dataset_run_over_three_hosts_syncs_on_each_and_scores_as_on_one(
    web_s3: str,
    cluster: Stack,
    s3_server: SeaweedS3,
    as_staff: APIClient,
    as_alice: APIClient,
    images: dict[str, str],
) -> None:
    hosts = [cluster.hostname(n) for n in cluster.host_names]
    wait_hosts(hosts)
    exp, ref = _s3_echo_experiment(s3_server, as_staff, as_alice, images, "scans-cluster/", count=12)

    spread = wait_for_run(as_alice, start_run(as_alice, exp, shards=3), timeout_s=300)
    assert spread["state"] == "succeeded", spread["error_reason"]
    assert {s["host"] for s in spread["shards"]} == set(hosts), "one shard on each host"
    # Each host synced its shard's samples, and only those, into its own node cache
    # (host: <var>/cache, hostN: <var>/hosts/<name>/): the three fetched the dataset once between them.
    caches = {hosts[0]: cluster.var_dir / "cache"} | {
        h: cluster.var_dir / "hosts" / h / "cache" for h in hosts[1:]
    }
    syncs = {row["shard"]: row for row in as_alice.get(f"/api/v1/runs/{spread['id']}/").json()["sync"]}
    for shard in spread["shards"]:
        row = syncs[shard["index"]]
        assert row["phase"] == "done", row
        assert row["files_total"] == row["fetched_files"] == 4, row
        vdir = caches[shard["host"]] / "datasets" / ref["name"] / ref["manifest_sha256"]
        assert (vdir / f"{MARKER}.shard-{shard['index']}-of-3").is_file(), f"shard not sealed in {vdir}"

    single = wait_for_run(as_alice, start_run(as_alice, exp, shards=1), timeout_s=300)
    assert single["state"] == "succeeded", single["error_reason"]
    merged = [json.loads(x)["id"] for x in _get(s3_server, spread["predictions_uri"]).splitlines()]
    assert len(merged) == len(set(merged)) == 12, "every sample predicted exactly once"
    assert spread["metrics"]["metrics"] == single["metrics"]["metrics"]
