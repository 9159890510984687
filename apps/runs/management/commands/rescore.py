"""Re-score every succeeded run whose newest evaluation is older than a metric version, in batches."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.runs.models import Evaluation, Run
from apps.runs.rescore import run_rescore, runs_scored_below
from apps.runs.services import RunError


class Command(BaseCommand):
    help = (
        "Re-score (evaluate and report again on the stored predictions, with today's eval image; "
        "no inference) every succeeded run whose newest evaluation has a metric version below "
        "--metric-version-below, at most --batch at a time: each batch is started, then waited for."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--metric-version-below", required=True, help="e.g. 2.1")
        parser.add_argument("--batch", type=int, default=20, help="rescores in flight at once (20)")
        parser.add_argument(
            "--wait-s", type=float, default=3600.0, help="how long to wait for one batch (3600)"
        )
        parser.add_argument("--dry-run", action="store_true", help="only list the runs")

    def handle(self, *args: Any, **options: Any) -> None:
        batch = int(options["batch"])
        if batch < 1:
            raise CommandError("--batch must be 1 or more.")
        todo = runs_scored_below(str(options["metric_version_below"]))
        self.stdout.write(f"{len(todo)} run(s) to re-score: {', '.join(map(str, todo)) or '-'}")
        if options["dry_run"]:
            return
        done = failed = 0
        for i in range(0, len(todo), batch):
            started = self._start(todo[i : i + batch])
            ok, bad = self._wait(started, float(options["wait_s"]))
            done, failed = done + ok, failed + bad
        self.stdout.write(f"re-scored {done} run(s), {failed} failed or not started")
        if failed:
            raise CommandError(f"{failed} rescore(s) failed or were not started; see above.")

    def _start(self, run_ids: list[int]) -> list[int | None]:
        started: list[int | None] = []
        for run in Run.objects.filter(pk__in=run_ids).order_by("pk"):
            try:
                ev = run_rescore(run=run)
            except RunError as e:
                self.stderr.write(f"run {run.pk}: {e}")
                started.append(None)
            else:
                self.stdout.write(f"run {run.pk}: evaluation {ev.pk} started")
                started.append(ev.pk)
        return started

    def _wait(self, started: list[int | None], wait_s: float) -> tuple[int, int]:
        ids = [pk for pk in started if pk is not None]
        deadline = time.monotonic() + wait_s
        while Evaluation.objects.filter(pk__in=ids, state__in=Evaluation.ACTIVE).exists():
            if time.monotonic() > deadline:
                raise CommandError(f"evaluations {ids} did not finish within {wait_s:.0f} s")
            time.sleep(0.5)
        ok = 0
        for ev in Evaluation.objects.filter(pk__in=ids).order_by("pk"):
            if ev.state == Evaluation.State.SUCCEEDED:
                ok += 1
                self.stdout.write(f"run {ev.run_id}: evaluation {ev.pk} metric version {ev.metric_version}")
            else:
                self.stderr.write(f"run {ev.run_id}: evaluation {ev.pk} {ev.state}: {ev.error_reason}")
        return ok, len(started) - ok
