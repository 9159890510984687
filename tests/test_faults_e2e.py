"""Faults with the real parts: a pool child killed, a warm shutdown, the control worker killed, Redis
restarted, the artifact store down for a while. Each run must end well, with every sample predicted
exactly once and never two containers of one shard at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import (
    IMAGE_VERSION,
    RedisServer,
    create_experiment,
    kill_worker,
    load_script,
    register_dataset,
    register_model,
    restart_worker,
    start_run,
    stored_artifact,
    wait_for_progress,
    wait_for_run,
)
from faultproxy import FaultProxy, Rule
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3

from apps.runs.models import Run, RunEvent
from hyperbench_web.devstack import Stack

pytestmark = pytest.mark.docker


class ContainerWatch:
    """Counts, every 0.2 s, the running containers of each shard of a run: never more than one."""

    def __init__(self, client: docker.DockerClient, run_id: int) -> None:
        self.client, self.run_id = client, run_id
        self.most: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(docker.errors.APIError):
                found = self.client.containers.list(
                    filters={"label": f"org.hyperbench.run={self.run_id}", "status": "running"},
                    ignore_removed=True,
                )
                per: dict[str, int] = {}
                for c in found:
                    key = f"{c.labels.get('org.hyperbench.stage')}/{c.labels.get('org.hyperbench.shard')}"
                    per[key] = per.get(key, 0) + 1
                for k, n in per.items():
                    self.most[k] = max(self.most.get(k, 0), n)
            time.sleep(0.2)

    def __enter__(self) -> ContainerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _slow_run(
    as_staff: APIClient, as_alice: APIClient, images: dict[str, str], ds: Path, count: int = 6
) -> int:
    load_script("make_sample_dataset").write_dataset(ds, count, 41)
    register_model(as_staff, "slowpoke", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    dataset = register_dataset(as_alice, ds)
    exp = create_experiment(
        as_alice, "slowpoke", dataset["id"], {"mode": "slow", "sleep_s": 1}, name=ds.parent.name
    )
    return start_run(as_alice, exp)


def _exactly_once(data: dict[str, Any], count: int) -> None:
    ids = [json.loads(x)["id"] for x in stored_artifact(data["id"]).open()]
    assert len(ids) == len(set(ids)) == count, "every sample predicted exactly once"


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(x) for x in (task / "children").read_text().split()]
    return out


def test_a_pool_child_killed_mid_shard_is_run_again_never_twice_at_once(
    platform: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path], images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:  # fmt: skip
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "child-kill" / "1")
    with ContainerWatch(docker_client, run_id) as watch:
        wait_for_progress(as_alice, run_id)
        main = platform.pid("host")
        assert main is not None
        children = _children(main)
        assert children, "the host worker has a pool child"
        for child in children:
            os.kill(child, signal.SIGKILL)  # the main process lives on and forks a new child
        data = wait_for_run(as_alice, run_id, timeout_s=180)

    assert data["state"] == "succeeded", data["error_reason"]
    _exactly_once(data, 6)
    assert watch.most.get("infer/0") == 1, f"two containers of one shard at once: {watch.most}"
    assert platform.pid("host") == main, "the worker kept serving"


def test_a_warm_shutdown_mid_shard_finishes_the_shard_and_loses_nothing(
    platform: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path], images: dict[str, str],
) -> None:  # fmt: skip
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "warm-stop" / "1")
    wait_for_progress(as_alice, run_id)
    pid = platform.pid("host")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # Celery's warm shutdown: finish what runs, take nothing new
    deadline = time.monotonic() + 60
    while platform.pid("host"):
        assert time.monotonic() < deadline, "the warm shutdown did not finish the shard"
        time.sleep(0.2)
    assert RunEvent.objects.filter(run_id=run_id, kind="shard_succeeded").exists() or (
        Run.objects.get(pk=run_id).shards.get(index=0).state == "succeeded"
    ), "the shard finished before the worker stopped"
    restart_worker(platform, "host", pid)

    data = wait_for_run(as_alice, run_id, timeout_s=180)

    assert data["state"] == "succeeded", data["error_reason"]
    assert data["shards"][0]["attempt"] == 1, "nothing was run again"
    _exactly_once(data, 6)


def test_the_control_worker_killed_mid_run_and_restarted_loses_no_event(
    platform: Stack, as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path], images: dict[str, str],
) -> None:  # fmt: skip
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "control-kill" / "1")
    wait_for_progress(as_alice, run_id)
    pid = kill_worker(platform, "control")
    time.sleep(3)  # the host goes on; its events wait on the control queue
    restart_worker(platform, "control", pid)

    data = wait_for_run(as_alice, run_id, timeout_s=180)

    assert data["state"] == "succeeded", data["error_reason"]
    assert data["shards"][0]["attempt"] == 1, "no event was lost: the shard was not run again"
    kinds = set(RunEvent.objects.filter(run_id=run_id).values_list("kind", flat=True))
    assert {"started", "shard_succeeded", "evaluated", "reported"} <= kinds
    _exactly_once(data, 6)


def test_a_redis_restart_mid_run_loses_no_run(
    platform: Stack, redis_server: RedisServer, as_staff: APIClient, as_alice: APIClient,
    roots: dict[str, Path], images: dict[str, str],
) -> None:  # fmt: skip
    first = _slow_run(as_staff, as_alice, images, roots["datasets"] / "redis-restart" / "1")
    second = start_run(as_alice, Run.objects.get(pk=first).experiment_id)  # queued behind the first
    wait_for_progress(as_alice, first)

    redis_server.restart(down_s=3)

    for run_id in (first, second):
        data = wait_for_run(as_alice, run_id, timeout_s=300)
        assert data["state"] == "succeeded", data["error_reason"]
        _exactly_once(data, 6)


# --- the artifact store down for a while ------------------------------------------------------

BUCKET = "hb-fault-artifacts"


@pytest.fixture
def store_behind_proxy(workers: Stack, s3_server: SeaweedS3, session_proxy: FaultProxy) -> Iterator[str]:
    """The host worker writing its artifacts to S3 through the fault proxy; yields the artifacts URI."""
    client = s3_server.client()
    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=BUCKET)
    prefix = f"outage-{uuid.uuid4().hex[:8]}/"
    saved = dict(workers.env)

    def restart(env: dict[str, str]) -> None:
        pid = workers.pid("host") or 0
        workers.stop(("host",))
        workers.env.clear()
        workers.env.update(env)
        restart_worker(workers, "host", pid)

    restart({
        **saved,
        "HYPERBENCH_S3_ENDPOINT_URL": session_proxy.url,
        "HYPERBENCH_S3_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "HYPERBENCH_ARTIFACTS_S3_ROOTS": f"s3://{BUCKET}/{prefix}",
        "HYPERBENCH_ARTIFACTS_S3_MAX_ATTEMPTS": "2",
        "HYPERBENCH_ARTIFACTS_S3_READ_TIMEOUT_S": "5",
    })  # fmt: skip
    session_proxy.reset()
    try:
        yield f"s3://{BUCKET}/{prefix}"
    finally:
        session_proxy.reset()
        restart(saved)


def test_the_artifact_store_down_mid_shard_costs_time_not_the_run(
    platform: Stack, settings: Any, store_behind_proxy: str, s3_server: SeaweedS3, session_proxy: FaultProxy,
    as_staff: APIClient, as_alice: APIClient, roots: dict[str, Path], images: dict[str, str],
) -> None:  # fmt: skip
    settings.HYPERBENCH_ARTIFACTS_URI = store_behind_proxy
    run_id = _slow_run(as_staff, as_alice, images, roots["datasets"] / "store-outage" / "1")
    wait_for_progress(as_alice, run_id)
    outage = session_proxy.add(Rule("503", method="PUT", times=-1))  # every upload refused: S3 is down

    time.sleep(30)
    run = Run.objects.get(pk=run_id)
    assert run.state == "running", f"the outage must not fail the run: {run.error_reason}"
    assert outage.hits >= 2, "the host kept trying"
    session_proxy.rules.remove(outage)  # S3 is back

    data = wait_for_run(as_alice, run_id, timeout_s=240)

    assert data["state"] == "succeeded", data["error_reason"]
    assert data["shards"][0]["attempt"] == 1, "the finished predictions were kept, not recomputed"
    bucket, _, key = (data["predictions_uri"]).removeprefix("s3://").partition("/")
    body = s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    ids = [json.loads(x)["id"] for x in body.splitlines() if x.strip()]
    assert len(ids) == len(set(ids)) == 6
