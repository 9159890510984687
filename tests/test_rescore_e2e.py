"""Re-score without re-inference, end to end: API -> Redis -> host worker -> Docker (the eval and
report images) -> control worker -> DB. Whether a model container started is read from Docker's
own events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import docker
import pytest
from django.core.management import call_command
from rest_framework.test import APIClient

from apps.runs.models import Evaluation, Run
from hyperbench_web.devstack import Stack
from tests.conftest import (
    containers_created,
    create_experiment,
    echo_dataset,
    start_run,
    transient_retries,
    wait_for_run,
)

pytestmark = pytest.mark.docker


def _host_log(stack: Stack, run_id: int) -> list[str]:
    """The host workers' log lines about this run: what a failed count is read against."""
    lines: list[str] = []
    for log in sorted(stack.log_dir.glob("host*.log")):
        text = log.read_text(errors="replace").splitlines()
        lines += [f"{log.name}: {x}" for x in text if f"run {run_id} " in x or f"run-{run_id}-" in x]
    return lines[-40:]


def _values(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in metrics["metrics"].items()}


def _wait_for_evaluation(
    client: APIClient, run_id: int, ev_id: int, timeout_s: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        evs = {e["id"]: e for e in client.get(f"/api/v1/runs/{run_id}/").json()["evaluations"]}
        if evs[ev_id]["state"] in ("succeeded", "failed"):
            return dict(evs[ev_id])
        time.sleep(0.5)
    raise AssertionError(f"evaluation {ev_id} of run {run_id} did not finish in {timeout_s}s")


def _board(client: APIClient, dataset: int) -> dict[str, Any]:
    r = client.get(f"/api/v1/leaderboard/?dataset={dataset}")
    assert r.status_code == 200, r.content
    [board] = r.json()["results"]
    return dict(board)


def _set_version(run_id: int, version: str) -> None:
    """Make the run look scored by an older eval image (its own first evaluation)."""
    run = Run.objects.get(pk=run_id)
    Run.objects.filter(pk=run_id).update(
        metric_version=version, metrics={**(run.metrics or {}), "metric_version": version}
    )


def test_a_run_scored_by_an_older_metric_version_is_rescored_without_inference_and_ranked(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    docker_client: docker.DockerClient,
) -> None:
    dataset = echo_dataset(as_staff, as_alice, images, roots["datasets"] / "rescored" / "1", count=5, seed=71)
    first = wait_for_run(
        as_alice, start_run(as_alice, create_experiment(as_alice, "echo", dataset, name="a"))
    )
    second = wait_for_run(
        as_alice,
        start_run(as_alice, create_experiment(as_alice, "echo", dataset, {"mode": "echo"}, name="b")),
    )
    assert (first["state"], second["state"]) == ("succeeded", "succeeded"), first["error_reason"]
    current = second["metrics"]["metric_version"]
    _set_version(first["id"], "0.9")
    ranks = {e["run"]: e["rank"] for e in _board(as_alice, dataset)["entries"]}
    assert ranks == {second["id"]: 1, first["id"]: None}

    t0 = time.time()
    r = as_alice.post(f"/api/v1/runs/{first['id']}/rescore/")
    assert r.status_code == 201, r.content
    ev = _wait_for_evaluation(as_alice, first["id"], r.json()["id"])

    assert ev["state"] == "succeeded", ev["error_reason"]
    assert ev["metric_version"] == current
    assert _values(ev["metrics"]) == _values(first["metrics"])  # same predictions, same eval image
    assert f"runs/{first['id']}/evaluations/{ev['id']}/" in ev["report_uri"]
    assert containers_created(docker_client, first["id"], "infer", t0) == 0  # no model container
    # Each stage ran once, plus once more per transient retry (a slow Docker engine under load),
    # which the host says in the run's events: a second dispatch would show as an extra container.
    for stage in ("evaluate", "report"):
        retries = transient_retries(first["id"], stage, evaluation=ev["id"])
        started = containers_created(docker_client, first["id"], stage, t0)
        assert started == 1 + len(retries), (stage, retries, _host_log(platform, first["id"]))
    run = as_alice.get(f"/api/v1/runs/{first['id']}/").json()
    assert (run["state"], run["metric_version"]) == ("succeeded", "0.9")  # the first evaluation stays
    board = _board(as_alice, dataset)
    assert board["metric_version"] == current
    ranked = {e["run"]: (e["rank"], e["evaluation"]) for e in board["entries"]}
    assert ranked[first["id"]][0] is not None
    assert ranked[first["id"]][1] == ev["id"]
    assert ranked[second["id"]] == (ranked[second["id"]][0], None)
    assert sorted(x[0] for x in ranked.values()) == [1, 2]

    # The management command: only the run whose newest evaluation is below the version.
    _set_version(second["id"], "0.9")
    call_command("rescore", "--metric-version-below", current, "--batch", "1", "--wait-s", "300")
    assert Evaluation.objects.filter(run_id=second["id"], state="succeeded").count() == 1
    assert Evaluation.objects.filter(run_id=first["id"]).count() == 1
    assert {e["rank"] for e in _board(as_alice, dataset)["entries"]} == {1, 2}
