"""Three control workers side by side apply a sharded run exactly once (every update is conditional)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from apps.runs.models import Run, RunEvent, RunShard
from hyperbench_web.devstack import Stack
from tests.conftest import create_experiment, echo_dataset, start_run, stored_artifact, wait_for_run


def test_three_control_workers_apply_a_sharded_run_exactly_once(
    three_controls: Stack,
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    ds = roots["datasets"] / "three-controls" / "1"
    dataset = echo_dataset(as_staff, as_alice, images, ds, count=12, seed=5)
    exp = create_experiment(as_alice, "echo", dataset)

    data = wait_for_run(as_alice, start_run(as_alice, exp, shards=4), timeout_s=300)

    assert data["state"] == "succeeded", data["error_reason"]
    run = Run.objects.get(pk=data["id"])
    assert run.progress_done == run.progress_total == 12
    shards = list(run.shards.all())
    assert [s.state for s in shards] == [RunShard.State.SUCCEEDED] * 4
    assert sum(s.done for s in shards) == 12
    kinds = list(RunEvent.objects.filter(run=run).values_list("kind", "shard"))
    for k in range(4):
        assert kinds.count(("shard_succeeded", k)) == 1, kinds
    assert [k for k, _ in kinds].count("evaluated") == 1
    assert [k for k, _ in kinds].count("reported") == 1
    # Each shard's time counted once: the run's inference time is the sum of its shards' own.
    durations = [
        float(e.data["duration_s"]) for e in run.events.filter(kind="shard_succeeded") if e.data is not None
    ]
    assert len(durations) == 4
    assert run.inference_s == pytest.approx(sum(durations))
    merged = stored_artifact(run.pk).read_text().splitlines()
    assert len(merged) == 12
    assert len({json.loads(x)["id"] for x in merged}) == 12, "every sample predicted exactly once"
