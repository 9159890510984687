"""Host tasks: inference shards, evaluation and report, each in its own container.

Every task is idempotent (a re-delivered message finds the published output
and only re-announces it) and fenced on this host (a lock per run and shard,
so at most one container runs for a shard at any moment). Failures become a
``failed`` event with a reason a person can act on; the worker keeps serving.

This module holds the Celery entry points only: a shard's work is in
:mod:`worker.inference`, evaluate/report/compare in :mod:`worker.systemstages`,
and what they share (fences, the failure guard, publishing) in :mod:`worker.stagekit`.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from worker import contract, inference, stagekit, systemstages
from worker.celery_app import app
from worker.errors import HostError

logger = logging.getLogger(__name__)


# max_retries=None: waiting for a GPU re-queues the shard many times (bounded by
# gpu_wait_s); transient errors are bounded by MAX_TRANSIENT_RETRIES in stagekit.guard.
@app.task(
    name=contract.TASK_INFER_SHARD, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def infer_shard(self: Task, payload: contract.ShardTask) -> None:
    spec, shard, attempt = payload["spec"], int(payload["shard"]), int(payload["attempt"])
    run_id = spec["run_id"]
    stagekit.guard(
        "infer", run_id, shard, lambda: inference.infer(spec, shard, attempt), self, attempt=attempt
    )


@app.task(name=contract.TASK_EVALUATE, bind=True, acks_late=True, reject_on_worker_lost=True)
def evaluate(self: Task, payload: dict[str, Any]) -> None:
    spec: contract.RunSpec = payload["spec"]
    attempt = self.request.retries + 1
    rescore: contract.Rescore | None = payload.get("rescore")
    stagekit.guard(
        "evaluate",
        spec["run_id"],
        None,
        lambda: systemstages.evaluate_run(
            spec, list(payload.get("predictions") or []), attempt=attempt, rescore=rescore
        ),
        self,
        tag={"evaluation": rescore["evaluation"]} if rescore else None,
    )


@app.task(name=contract.TASK_REPORT, bind=True, acks_late=True, reject_on_worker_lost=True)
def report(self: Task, payload: dict[str, Any]) -> None:
    spec: contract.RunSpec = payload["spec"]
    attempt = self.request.retries + 1
    rescore: contract.Rescore | None = payload.get("rescore")
    stagekit.guard(
        "report",
        spec["run_id"],
        None,
        lambda: systemstages.report_run(spec, payload, attempt=attempt),
        self,
        tag={"evaluation": rescore["evaluation"]} if rescore else None,
    )


@app.task(name=contract.TASK_COMPARE, bind=True, acks_late=True, reject_on_worker_lost=True)
def compare(self: Task, payload: contract.CompareTask) -> None:
    """Render a comparison report of several runs on one dataset version."""
    cid = int(payload["comparison_id"])
    host = stagekit.config().hostname
    try:
        uri = systemstages.compare_runs(payload)
    except HostError as e:
        if not e.permanent and self.request.retries < stagekit.MAX_TRANSIENT_RETRIES:
            raise self.retry(countdown=2 ** (self.request.retries + 1), exc=e, max_retries=None) from e
        result: contract.ComparisonResult = {
            "comparison_id": cid,
            "ok": False,
            "host": host,
            "reason": str(e),
        }
    except Exception as e:  # a bug must fail the comparison visibly
        logger.exception("comparison %s: unexpected error", cid)
        result = {
            "comparison_id": cid,
            "ok": False,
            "host": host,
            "reason": f"internal error in the host worker ({type(e).__name__}: {e}); see the worker log.",
        }
    else:
        result = {"comparison_id": cid, "ok": True, "host": host, "report_uri": uri}
    app.send_task(contract.TASK_RECORD_COMPARISON, args=[result], queue=contract.Queue.CONTROL)
