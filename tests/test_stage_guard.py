"""The stage guard (worker/stagekit.py): what a failed stage sends, and when it is retried."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from worker import events as worker_events
from worker import stagekit
from worker.errors import HostError


class _Retry(Exception):
    """What Celery's ``task.retry`` raises; carries what it was asked to re-send."""

    def __init__(self, args: list[Any], countdown: int) -> None:
        super().__init__("retry")
        self.args_ = args
        self.countdown = countdown


class _Task:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.request = SimpleNamespace(args=[payload], retries=0)

    def retry(self, *, args: list[Any], countdown: int, exc: Exception, max_retries: None) -> _Retry:
        return _Retry(args, countdown)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def emit(run_id: int, kind: str, stage: str, **fields: Any) -> None:
        out.append({"run_id": run_id, "kind": kind, "stage": stage, **fields})

    monkeypatch.setattr(worker_events, "emit", emit)
    return out


def _fail(error: HostError) -> None:
    raise error


def test_a_transient_error_is_retried_and_the_retry_is_said_in_the_runs_events(
    sent: list[dict[str, Any]],
) -> None:
    task = _Task({"spec": {}, "rescore": {"evaluation": 9}})
    with pytest.raises(_Retry) as retried:
        stagekit.guard(
            "report",
            7,
            None,
            lambda: _fail(HostError("Docker failed while running x: read timed out", permanent=False)),
            task,
            tag={"evaluation": 9},
        )
    assert retried.value.args_[0]["transient_tries"] == 1
    assert retried.value.countdown == 2
    [event] = sent
    assert (event["run_id"], event["kind"], event["stage"]) == (7, "log", "report")
    assert event["data"] == {"evaluation": 9, "retry": 1}
    assert event["message"].startswith("transient error, retrying in 2s: Docker failed")


def test_when_the_transient_budget_is_spent_the_stage_fails_with_its_reason(
    sent: list[dict[str, Any]],
) -> None:
    task = _Task({"spec": {}, "transient_tries": stagekit.MAX_TRANSIENT_RETRIES})
    stagekit.guard(
        "evaluate",
        7,
        None,
        lambda: _fail(HostError("S3 away", permanent=False)),
        task,
    )
    [event] = sent
    assert (event["kind"], event["stage"], event["reason"]) == ("failed", "evaluate", "S3 away")


def test_a_permanent_error_fails_at_once(sent: list[dict[str, Any]]) -> None:
    stagekit.guard("evaluate", 7, None, lambda: _fail(HostError("no such image")), _Task({}))
    assert [e["kind"] for e in sent] == ["failed"]
