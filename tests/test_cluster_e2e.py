"""Three host workers on one machine: shards spread over hosts, a cancel that stops, a host that dies.

Real Redis, real Celery workers as separate processes (one control worker,
three host workers with their own names, caches, work dirs and queues), the
real Docker engine, and the fast ``testkit`` images.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import docker
from conftest import (
    IMAGE_VERSION,
    create_experiment,
    load_script,
    register_dataset,
    register_model,
    start_run,
    stored_artifact,
    wait_for_run,
    wait_hosts,
)
from rest_framework.test import APIClient

from apps.runs.models import RunEvent, RunShard
from hyperbench_web.devstack import Stack

CANCEL_DEADLINE_S = 10  # the promise: no container of a cancelled run after this long


def _hosts(stack: Stack) -> list[str]:
    return [stack.hostname(n) for n in stack.host_names]


def _containers(client: docker.DockerClient, run_id: int) -> list[Any]:
    found = client.containers.list(
        all=True, filters={"label": f"org.hyperbench.run={run_id}"}, ignore_removed=True
    )
    return list(found)


def _slow_run(
    as_staff: APIClient, as_alice: APIClient, images: dict[str, str], ds: Path, *, count: int, shards: int
) -> int:
    load_script("make_sample_dataset").write_dataset(ds, count, 31)
    register_model(as_staff, "slowpoke", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    dataset = register_dataset(as_alice, ds)
    exp = create_experiment(as_alice, "slowpoke", dataset["id"], {"mode": "slow", "sleep_s": 3}, name="slow")
    return start_run(as_alice, exp, shards=shards)


def test_a_three_shard_run_runs_on_three_hosts_with_the_metrics_of_one_host(
    platform: Stack, cluster: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path],
    images: dict[str, str],
) -> None:  # fmt: skip
    wait_hosts(_hosts(cluster))
    ds = roots["datasets"] / "spread" / "1"
    load_script("make_sample_dataset").write_dataset(ds, 12, 17)
    register_model(as_staff, "echo", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    dataset = register_dataset(as_alice, ds)
    exp = create_experiment(as_alice, "echo", dataset["id"], name="echo spread")

    spread = wait_for_run(as_alice, start_run(as_alice, exp, shards=3), timeout_s=300)
    single = wait_for_run(as_alice, start_run(as_alice, exp, shards=1), timeout_s=300)

    assert spread["state"] == "succeeded", spread["error_reason"]
    assert single["state"] == "succeeded", single["error_reason"]
    assert {s["host"] for s in spread["shards"]} == set(_hosts(cluster)), "each shard on its own host"
    predicted = [json.loads(x)["id"] for x in stored_artifact(spread["id"]).open()]
    assert sorted(predicted) == sorted(json.loads(x)["id"] for x in (ds / "manifest.jsonl").open())
    assert len(predicted) == len(set(predicted)) == 12, "every sample predicted exactly once"
    assert spread["metrics"]["metrics"] == single["metrics"]["metrics"]


def test_a_cancel_mid_shard_stops_every_container_of_the_run_and_queued_shards_never_start(
    platform: Stack, cluster: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path],
    images: dict[str, str], docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    wait_hosts(_hosts(cluster))
    # Four shards of 3 samples at 3 s each over three hosts: three run, one waits in a queue.
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "cancel" / "1", count=12, shards=4)
    deadline = time.monotonic() + 120
    while len(_containers(docker_client, run_id)) < 3:
        assert time.monotonic() < deadline, "three shards never ran at once"
        time.sleep(0.3)

    asked = time.monotonic()
    r = as_alice.post(f"/api/v1/runs/{run_id}/cancel/")
    assert r.status_code in (200, 202), r.content
    while _containers(docker_client, run_id):
        assert time.monotonic() - asked < CANCEL_DEADLINE_S, [
            c.name for c in _containers(docker_client, run_id)
        ]
        time.sleep(0.2)

    # Long enough for the queued shard to have started if it were going to, and for late ticks.
    time.sleep(8)
    assert not _containers(docker_client, run_id)
    data = as_alice.get(f"/api/v1/runs/{run_id}/").json()
    assert data["state"] == "cancelled"
    assert [s["state"] for s in data["shards"]] == ["cancelled"] * 4
    started = set(RunEvent.objects.filter(run_id=run_id, kind="started").values_list("shard", flat=True))
    assert len(started) == 3, f"the queued shard must never start; started: {started}"
    stopped = RunEvent.objects.filter(run_id=run_id, kind="cancelled").values_list("host", flat=True)
    assert len(set(stopped)) == 3, "each host said it stopped its shard"
    assert not RunEvent.objects.filter(run_id=run_id, stage__in=["evaluate", "report"]).exists()


def test_a_host_killed_for_good_hands_its_shard_to_a_live_host(
    platform: Stack, cluster: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path],
    images: dict[str, str], docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    wait_hosts(_hosts(cluster))
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "orphan" / "1", count=6, shards=3)
    deadline = time.monotonic() + 120
    while RunShard.objects.filter(run_id=run_id, state="running").exclude(host="").count() < 3:
        assert time.monotonic() < deadline, "the shards never all started"
        time.sleep(0.3)
    victim = "host3"
    victim_host = cluster.hostname(victim)
    pid = cluster.pid(victim)
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # no goodbye, and it does not come back during the run
    try:
        data = wait_for_run(as_alice, run_id, timeout_s=240)
    finally:
        (cluster.log_dir / f"{victim}.log").rename(cluster.log_dir / f"{victim}.{pid}.log")
        cluster.start((victim,))
        cluster.wait_workers((victim,), timeout_s=90)

    assert data["state"] == "succeeded", data["error_reason"]
    moved = [s for s in data["shards"] if s["attempt"] == 2]
    assert len(moved) == 1
    assert moved[0]["host"] != victim_host
    messages = RunEvent.objects.filter(run_id=run_id, kind="log").values_list("message", flat=True)
    # (The suite's quiet window, 3 s, is shorter than its silence window, 5 s: either may say it.)
    assert any(victim_host in m and "dispatched again (attempt 2)" in m for m in messages), list(messages)
    predicted = [json.loads(x)["id"] for x in stored_artifact(data["id"]).open()]
    assert len(predicted) == len(set(predicted)) == 6
    # The dead host's container was left running on the shared engine; its restart sweeps it.
    deadline = time.monotonic() + 30
    while [c for c in _containers(docker_client, run_id) if c.status == "running"]:
        assert time.monotonic() < deadline, "the restarted host did not sweep its dead start's container"
        time.sleep(0.5)
