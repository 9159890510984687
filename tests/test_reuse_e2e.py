"""Nothing computed twice: the prediction cache and its pruning, resume after a killed host, retry.

API -> Redis -> host worker process -> Docker (the testkit model) -> control worker -> DB, as
in test_run_e2e.py. Whether a model container started is read from Docker's own events.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import docker
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.runs.models import RunEvent
from hyperbench_web.devstack import Stack
from tests.conftest import (
    containers_created,
    create_experiment,
    echo_dataset,
    kill_worker,
    register_dataset,
    restart_worker,
    start_run,
    stored_artifact,
    transient_retries,
    wait_for_progress,
    wait_for_run,
)

pytestmark = pytest.mark.docker


def _infer_containers(client: docker.DockerClient, run_id: int, since: float) -> int:
    """How many model containers Docker created for the run since ``since``, less one for each
    transient retry the host reported (a retry starts the shard's container again)."""
    return containers_created(client, run_id, "infer", since) - len(transient_retries(run_id, "infer"))


def _rows(run_id: int) -> dict[str, dict[str, Any]]:
    return {(r := json.loads(x))["id"]: r for x in stored_artifact(run_id).read_text().splitlines()}


def _metrics(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in data["metrics"]["metrics"].items()}


def _run(client: APIClient, exp: int, shards: int = 1, **body: Any) -> dict[str, Any]:
    r = client.post("/api/v1/runs/", {"experiment": exp, "shards": shards, **body}, format="json")
    assert r.status_code == 201, r.content
    data = wait_for_run(client, r.json()["id"])
    assert data["state"] == "succeeded", data["error_reason"]
    return data


def test_an_experiment_run_twice_infers_nothing_the_second_time(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    dataset = echo_dataset(as_staff, as_alice, images, roots["datasets"] / "twice" / "1", count=6, seed=61)
    exp = create_experiment(as_alice, "echo", dataset)
    t0 = time.time()
    cold = _run(as_alice, exp)
    assert _infer_containers(docker_client, cold["id"], t0) == 1
    assert cold["cache"] == {"hits": 0, "misses": 6, "resumed": 0}
    assert cold["reuse"] is True

    t1 = time.time()
    # Another shard count: not in the key.
    warm = _run(as_alice, exp, shards=2)

    assert warm["cache"] == {"hits": 6, "misses": 0, "resumed": 0}
    assert [s["cache_hits"] for s in warm["shards"]] == [3, 3]
    assert _infer_containers(docker_client, warm["id"], t1) == 0
    assert _metrics(warm) == _metrics(cold)
    rows = _rows(warm["id"])
    assert len(rows) == 6
    assert all(r["cached"] is True and r["cached_from_run"] == cold["id"] for r in rows.values())
    logs = RunEvent.objects.filter(run_id=warm["id"], kind="log").values_list("message", flat=True)
    assert any(f"computed by run {cold['id']}" in m for m in logs), list(logs)
    html = stored_artifact(warm["id"], "report_uri").read_text()
    assert "6 of 6 samples reused (computed by run" in html


def test_a_new_prompt_or_params_misses_every_sample_and_reuse_false_recomputes(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    dataset = echo_dataset(as_staff, as_alice, images, roots["datasets"] / "keyed" / "1", count=4, seed=62)
    base = create_experiment(as_alice, "echo", dataset, name="base")
    _run(as_alice, base)
    r = as_alice.post(
        "/api/v1/experiments/",
        {"name": "prompted", "model": "echo", "dataset": dataset, "prompt": "Read the page."},
        format="json",
    )
    assert r.status_code == 201, r.content
    prompted = r.json()["id"]
    with_params = create_experiment(as_alice, "echo", dataset, {"mode": "echo"}, name="params")

    for exp in (prompted, with_params):
        assert _run(as_alice, exp)["cache"] == {"hits": 0, "misses": 4, "resumed": 0}

    t0 = time.time()
    fresh = _run(as_alice, base, reuse=False)
    assert fresh["reuse"] is False
    assert fresh["cache"] == {"hits": 0, "misses": 4, "resumed": 0}
    assert _infer_containers(docker_client, fresh["id"], t0) == 1


def test_a_sample_whose_image_bytes_change_under_the_same_id_misses(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    v1 = roots["datasets"] / "redrawn" / "1"
    dataset = echo_dataset(as_staff, as_alice, images, v1, count=4, seed=63)
    _run(as_alice, create_experiment(as_alice, "echo", dataset))
    # Version 2: the same ids, one image redrawn (its manifest entry follows the new bytes).
    v2 = roots["datasets"] / "redrawn" / "2"
    shutil.copytree(v1, v2)
    meta = json.loads((v2 / "dataset.json").read_text())
    (v2 / "dataset.json").write_text(json.dumps({**meta, "version": "2"}))
    manifest = [json.loads(x) for x in (v2 / "manifest.jsonl").read_text().splitlines()]
    image = v2 / manifest[1]["image"]
    image.write_bytes(image.read_bytes() + b"\0")
    manifest[1].pop("sha256", None)
    manifest[1]["size"] = image.stat().st_size
    (v2 / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
    dataset2 = register_dataset(as_alice, v2)["id"]

    data = _run(as_alice, create_experiment(as_alice, "echo", dataset2, name="v2"))

    assert data["cache"] == {"hits": 3, "misses": 1, "resumed": 0}
    rows = _rows(data["id"])
    assert "cached" not in rows[manifest[1]["id"]]
    assert all(rows[m["id"]]["cached"] for i, m in enumerate(manifest) if i != 1)


def _received(roots: dict[str, Path], run_id: int, shard: int = 0, attempt: int = 1) -> list[str]:
    """The ids the model container was sent, as the testkit printed them first in its kept log."""
    log = (
        roots["artifacts"]
        / "runs"
        / str(run_id)
        / "logs"
        / "infer"
        / f"shard-{shard}"
        / f"attempt-{attempt}.log"
    )
    line = next(x for x in log.read_text().splitlines() if x.startswith("testkit: received "))
    count, _, ids = line.removeprefix("testkit: received ").partition(":")
    out = ids.split()
    assert len(out) == int(count), line
    return out


def test_a_run_retried_sends_only_its_failed_and_missing_samples_to_the_model(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    as_bob: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    ds = roots["datasets"] / "retry" / "1"
    dataset = echo_dataset(as_staff, as_alice, images, ds, count=6, seed=64)
    ids = [json.loads(x)["id"] for x in (ds / "manifest.jsonl").read_text().splitlines()]
    # The testkit writes an error line for ids[1] and ids[3], and crashes (exit 3) on reaching ids[5].
    failing = {"mode": "echo", "fail_ids": [ids[1], ids[3]], "exit_ids": [ids[5]]}
    crashy = create_experiment(as_alice, "echo", dataset, failing, name="crashy")
    failed = wait_for_run(as_alice, start_run(as_alice, crashy))
    assert failed["state"] == "failed"
    assert "exited with code 3" in failed["error_reason"], failed["error_reason"]
    assert f"failing on purpose at sample {ids[5]}" in failed["error_reason"]
    assert _received(roots, failed["id"]) == ids
    assert as_bob.post(f"/api/v1/runs/{failed['id']}/retry/").status_code == 404

    t0 = time.time()
    r = as_alice.post(f"/api/v1/runs/{failed['id']}/retry/")

    assert r.status_code == 201, r.content
    assert r.json()["retry_of"] == failed["id"]
    retried = wait_for_run(as_alice, r.json()["id"])
    # The same frozen spec, so the same model: it fails on the same samples again. What matters is
    # what reached it: the two samples that had an error and the one it died on, nothing else.
    assert retried["state"] == "failed"
    assert _infer_containers(docker_client, retried["id"], t0) == 1
    assert _received(roots, retried["id"]) == [ids[1], ids[3], ids[5]]
    log = RunEvent.objects.get(run_id=retried["id"], kind="log", stage="infer")
    assert log.data == {"cache": {"hits": 3, "resumed": 0, "misses": 3, "runs": [failed["id"]]}}
    assert "3 of 6 samples to infer" in log.message

    ok = wait_for_run(as_alice, start_run(as_alice, create_experiment(as_alice, "echo", dataset, name="ok")))
    assert as_alice.post(f"/api/v1/runs/{ok['id']}/retry/").status_code == 409


def test_samples_that_failed_are_not_cached_and_are_the_only_ones_the_next_run_infers(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    ds = roots["datasets"] / "sample-errors" / "1"
    dataset = echo_dataset(as_staff, as_alice, images, ds, count=5, seed=67)
    ids = [json.loads(x)["id"] for x in (ds / "manifest.jsonl").read_text().splitlines()]
    exp = create_experiment(as_alice, "echo", dataset, {"mode": "echo", "fail_ids": [ids[0], ids[2]]})

    # Per-sample errors do not fail a run: it succeeds, counts them, and scores them as failures.
    first = _run(as_alice, exp)
    assert first["metrics"]["errors"] == 2
    assert first["cache"] == {"hits": 0, "misses": 5, "resumed": 0}
    rows = _rows(first["id"])
    assert {i for i, r in rows.items() if r["error"]} == {ids[0], ids[2]}
    # A succeeded run is not retried: starting the experiment again is how its errors are redone.
    assert as_alice.post(f"/api/v1/runs/{first['id']}/retry/").status_code == 409

    again = _run(as_alice, exp)

    assert _received(roots, again["id"]) == [ids[0], ids[2]]
    assert again["cache"] == {"hits": 3, "misses": 2, "resumed": 0}
    assert again["metrics"]["errors"] == 2
    rows = _rows(again["id"])
    assert {i for i, r in rows.items() if r.get("cached")} == {ids[1], ids[3], ids[4]}
    assert {i for i, r in rows.items() if r["error"]} == {ids[0], ids[2]}


def test_a_cancelled_run_retried_finishes_with_what_it_had_predicted(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    dataset = echo_dataset(
        as_staff, as_alice, images, roots["datasets"] / "cancelled" / "1", count=6, seed=65
    )
    exp = create_experiment(as_alice, "echo", dataset, {"mode": "slow", "sleep_s": 1}, name="slow")
    run_id = start_run(as_alice, exp)
    wait_for_progress(as_alice, run_id, 2)
    assert as_alice.post(f"/api/v1/runs/{run_id}/cancel/").status_code == 200
    assert wait_for_run(as_alice, run_id)["state"] == "cancelled"
    # The host says "cancelled" after it has cached what the stopped container wrote (inference.py).
    deadline = time.monotonic() + 60
    while not RunEvent.objects.filter(run_id=run_id, kind="cancelled", stage="infer").exists():
        assert time.monotonic() < deadline, "the host never said it stopped the shard"
        time.sleep(0.2)

    r = as_alice.post(f"/api/v1/runs/{run_id}/retry/")
    assert r.status_code == 201, r.content
    data = wait_for_run(as_alice, r.json()["id"])

    assert data["state"] == "succeeded", data["error_reason"]
    hits = data["cache"]["hits"]
    assert hits >= 2
    assert data["cache"] == {"hits": hits, "misses": 6 - hits, "resumed": 0}
    assert data["metrics"]["n"] == 6
    rows = _rows(data["id"])
    assert sum(bool(r.get("cached")) for r in rows.values()) == hits


def test_a_shard_whose_host_was_killed_resumes_from_its_validated_predictions(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    dataset = echo_dataset(as_staff, as_alice, images, roots["datasets"] / "resume" / "1", count=8, seed=66)
    exp = create_experiment(as_alice, "echo", dataset, {"mode": "slow", "sleep_s": 1}, name="slow")
    run_id = start_run(as_alice, exp)
    wait_for_progress(as_alice, run_id, 3)
    restart_worker(platform, "host", kill_worker(platform, "host"))
    data = wait_for_run(as_alice, run_id, timeout_s=180)

    assert data["state"] == "succeeded", data["error_reason"]
    shard = data["shards"][0]
    assert shard["attempt"] == 2
    # At least the 2 predictions cached a tick before the count of 3 was seen; the rest inferred.
    assert shard["resumed"] >= 2
    assert data["cache"] == {"hits": 0, "misses": 8, "resumed": shard["resumed"]}
    log = RunEvent.objects.get(run_id=run_id, kind="log", stage="infer", message__contains="resumed")
    told = (log.data or {})["cache"]
    assert told["resumed"] == shard["resumed"]
    assert told["misses"] == 8 - shard["resumed"]  # what the new container was sent
    rows = _rows(run_id)
    assert len(rows) == 8
    assert sum(bool(r.get("resumed")) for r in rows.values()) == shard["resumed"]


def test_entries_pruned_from_the_cache_are_inferred_again_and_the_rest_reused(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    settings: Any,
) -> None:
    ds = roots["datasets"] / "pruned" / "1"
    dataset = echo_dataset(as_staff, as_alice, images, ds, count=5, seed=68)
    ids = [json.loads(x)["id"] for x in (ds / "manifest.jsonl").read_text().splitlines()]
    exp = create_experiment(as_alice, "echo", dataset)
    cold = _run(as_alice, exp)
    cache = Path(urlparse(settings.HYPERBENCH_PREDICTION_CACHE_URI).path)
    entries = {json.loads(p.read_text())["line"]["id"]: p for p in cache.rglob("*.json")}
    assert sorted(entries) == sorted(ids)
    # Two entries unused for 40 days: the prune takes them, and only them.
    old = time.time() - 40 * 86400
    for sid in (ids[1], ids[4]):
        os.utime(entries[sid], (old, old))
    out = io.StringIO()
    call_command("prune_predcache", "--older-than-days", "30", stdout=out)
    assert "removed 2 of 5 entries" in out.getvalue()

    warm = _run(as_alice, exp)

    assert warm["cache"] == {"hits": 3, "misses": 2, "resumed": 0}
    assert _received(roots, warm["id"]) == [ids[1], ids[4]]
    assert _metrics(warm) == _metrics(cold)
    assert sorted(p.name for p in cache.rglob("*.json")) == sorted(p.name for p in entries.values())
