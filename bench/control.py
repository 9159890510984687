"""Benchmark: the control plane under a simulated cluster of H hosts with S running shards each.

    make bench-control            # or: .venv/bin/python bench/control.py [--hosts 125 --shards 8]

On a stack of its own: its own Redis on a free port, a PostgreSQL database
``hyperbench_bench`` on 127.0.0.1:5432 (dropped and made again), the web app on a
free port and ``--controls`` control workers (the real ones, as separate
processes). No containers: ``--procs`` emitter processes play the hosts through
the real host-side event path (``worker.events.EventSender`` and the worker's
Celery app, heartbeats included: every host says which shards it runs, all hosts
at the same moment, the worst case). Each
simulated shard makes one progress tick a second for ``--seconds`` (60), then
every shard finishes (``shard_succeeded``), and the last shard of each run moves
it to evaluation.

Figures:

- ``events_per_s``: events the hosts produced during the window (progress ticks,
  heartbeats) minus those still queued at its end, per second: what the control
  plane absorbed.
- ``progress_lag_p95_s``: for the shards of a few runs, the time from a progress
  value being made on a host to ``GET /api/v1/runs/{id}/`` showing it (or more),
  polled through the real web app every 0.1 s round robin; the 95th percentile.
- ``fanin_s``: per run, from its last ``shard_succeeded`` leaving a host to the
  run's claim for evaluation (``Run.stage_sent_at``); the 95th percentile.

``--legacy`` sends every event as its own message, at once, as the hosts did
and every heartbeat as its own Celery task, as the hosts did before the batches
(main before issue 13), for the same simulation.
The last line is::

    control: shards=<H*S> events_per_s=<x> progress_lag_p95_s=<x> fanin_s=<x>
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import secrets
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchstack import Parts, say, wait_web  # noqa: E402

from hyperbench_web.devstack import Stack  # noqa: E402

PG = "postgres://hyperbench:hyperbench@127.0.0.1:5432"
DB = "hyperbench_bench"
SHARDS_PER_RUN = 8
TOTAL = 100_000  # a shard's sample count: never reached in the window
TRACKED_RUNS = 4


def _p95(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(0.95 * (len(xs) - 1)))]


# --- the simulated hosts (separate processes: no Django, the worker's own modules) ----------


class _SimHosts:
    """The hosts one emitter process plays: their senders, heartbeats, ticks and ends."""

    def __init__(self, broker: str, hosts: list[tuple[str, list[tuple[int, int]]]], args: dict[str, Any]):
        os.environ["CELERY_BROKER_URL"] = broker
        from worker import contract
        from worker.celery_app import app
        from worker.events import EventSender, send_batch, send_heartbeat

        app.conf.broker_url = broker
        self.app, self.contract, self.hosts, self.args = app, contract, hosts, args
        self.send_heartbeat = send_heartbeat
        send = self._legacy if args["legacy"] else send_batch
        flush_s = 0 if args["legacy"] else args["flush_s"]
        self.senders = {
            name: EventSender(name, f"sim-{name}", send=send, flush_s=flush_s) for name, _ in hosts
        }
        self.tracked = set(args["tracked"])
        self.made: list[tuple[int, int, int, float]] = []
        self.heartbeats = self.ticks = 0

    def _legacy(self, batch: list[dict[str, Any]], state: bool) -> None:
        for ev in batch:  # one Celery task message per event, as before the batches
            self.app.send_task(self.contract.TASK_RECORD_EVENT, args=[ev], queue=self.contract.Queue.CONTROL)

    def heartbeat(self) -> None:
        for name, shards in self.hosts:
            running = [{"run": r, "shard": k, "stage": "infer", "gpus": [], "started": ""} for r, k in shards]
            report: dict[str, Any] = {
                "host": name,
                "worker": f"celery@{name}",
                "instance": f"sim-{name}",
                "queue": f"host.{name}",
                "ts": time.time(),
                "slots": len(shards),
                "active": len(shards),
                "running": running,
            }
            if self.args["legacy"]:  # a Celery task each, as before the heartbeats went on hb.events
                self.app.send_task(
                    self.contract.TASK_HOST_HEARTBEAT, args=[report], queue=self.contract.Queue.CONTROL
                )
            else:
                self.send_heartbeat(cast(Any, report))
            self.heartbeats += 1

    def each(self) -> Any:
        for name, shards in self.hosts:
            for r, k in shards:
                yield self.senders[name], r, k

    def tick(self, second: int) -> None:
        for sender, r, k in self.each():
            now = time.time()
            sender.emit(r, "progress", "infer", shard=k, attempt=1, done=second, total=TOTAL)
            self.ticks += 1
            if r in self.tracked:
                self.made.append((r, k, second, now))

    def finish(self) -> dict[int, float]:
        last: dict[int, float] = {}
        for sender in self.senders.values():
            sender.flush()
        for sender, r, k in self.each():
            uri = f"file:///bench/runs/{r}/shards/{k}/attempt-1/predictions.jsonl"
            data = {"predictions_uri": uri, "count": self.args["seconds"], "errors": 0, "duration_s": 1.0}
            sender.emit(r, "shard_succeeded", "infer", shard=k, attempt=1, data=data)
            last[r] = max(last.get(r, 0.0), time.time())
        return last


def _emitter(
    broker: str, hosts: list[tuple[str, list[tuple[int, int]]]], t0: float, args: dict[str, Any], out: str
) -> None:
    sim = _SimHosts(broker, hosts, args)
    while time.time() < t0:
        time.sleep(0.01)
    for sender, r, k in sim.each():
        sender.emit(r, "started", "infer", shard=k, attempt=1)
    sim.heartbeat()
    for second in range(1, args["seconds"] + 1):
        while time.time() < t0 + second:
            time.sleep(0.005)
        sim.tick(second)
        if second % 10 == 0:
            sim.heartbeat()
    last = sim.finish()
    result = {
        "made": sim.made,
        "last_succeeded": last,
        "ticks": sim.ticks,
        "heartbeats": sim.heartbeats,
        "messages": sum(s.sent_messages for s in sim.senders.values()),
        "events": sum(s.sent_events for s in sim.senders.values()),
    }
    Path(out).write_text(json.dumps(result))


# --- the bench ----------------------------------------------------------------------------


class Bench(Parts):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("control")
        self.args = args

    def start(self) -> None:
        self.reset_var()
        self.start_redis()
        import psycopg

        with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {DB}")
        secret = secrets.token_urlsafe(24)
        env = {
            "HYPERBENCH_VAR_DIR": str(self.var),
            "HYPERBENCH_API_THROTTLE_USER": "1000000/minute",
            # The simulated hosts say hello every 10 s: the reconciler must not take them for silent.
            "HYPERBENCH_HOST_SILENT_S": "60",
        }
        self.db_url = f"{PG}/{DB}"
        self.stack = Stack(
            var_dir=self.var,
            broker_url=self.broker,
            database_url=self.db_url,
            web_port=self.web_port,
            secret_key=secret,
            env=env,
            controls=self.args.controls,
        )
        os.environ.update({**env, "DJANGO_SETTINGS_MODULE": "hyperbench_web.settings", "SECRET_KEY": secret})
        os.environ["DATABASE_URL"] = self.db_url
        os.environ["CELERY_BROKER_URL"] = self.broker
        import django

        django.setup()
        from django.core.management import call_command

        call_command("migrate", "--noinput", verbosity=0)
        from django.contrib.auth import get_user_model
        from rest_framework.authtoken.models import Token

        password = secrets.token_urlsafe(12)
        user = get_user_model().objects.create_user("bench", password=password, is_staff=True)
        self.headers = {"Authorization": f"Token {Token.objects.create(user=user).key}"}
        self.user = user
        names = ["web", *self.stack.control_names]
        self.stack.start(names)
        self.stack.wait_workers(self.stack.control_names, timeout_s=120)
        wait_web(self.base, self.headers)

    def make_runs(self, runs: int) -> list[int]:
        from apps.catalog.models import Dataset, ModelImage
        from apps.runs.models import Experiment, Run, RunShard

        ds = Dataset.objects.create(
            name="bench",
            version="1",
            task="ocr",
            source_uri="file:///bench/",
            manifest_sha256="a" * 64,
            sample_count=TOTAL * SHARDS_PER_RUN,
        )
        model = ModelImage.objects.create(name="sim", image="hyperbench/sim:1")
        exp = Experiment.objects.create(name="bench", model=model, dataset=ds, owner=self.user)
        made = Run.objects.bulk_create(
            [
                Run(
                    experiment=exp,
                    spec={"model": {"requires_gpu": False, "gpus": 0}, "summary": {}},
                    state=Run.State.RUNNING,
                    manifest_sha256=ds.manifest_sha256,
                    progress_total=TOTAL * SHARDS_PER_RUN,
                )
                for _ in range(runs)
            ]
        )
        ids = sorted(r.pk for r in Run.objects.filter(experiment=exp))
        RunShard.objects.bulk_create(
            [
                RunShard(run_id=r, index=k, total=TOTAL, state=RunShard.State.PENDING)
                for r in ids
                for k in range(SHARDS_PER_RUN)
            ]
        )
        assert len(made) == runs
        return ids

    def queued(self, name: str = "control") -> int:
        import redis

        return int(redis.Redis.from_url(self.broker).llen(name))

    def run(self) -> dict[str, float]:
        a = self.args
        total = a.hosts * a.shards
        runs = self.make_runs(total // SHARDS_PER_RUN)
        placement = [(r, k) for r in runs for k in range(SHARDS_PER_RUN)]
        hosts = [(f"sim{h:04d}", placement[h * a.shards : (h + 1) * a.shards]) for h in range(a.hosts)]
        tracked = runs[:TRACKED_RUNS]
        t0 = time.time() + 3
        outs = [str(self.var / f"emitter-{p}.json") for p in range(a.procs)]
        spec = {"seconds": a.seconds, "legacy": a.legacy, "flush_s": a.flush_s, "tracked": tracked}
        ctx = mp.get_context("spawn")
        procs = [
            ctx.Process(target=_emitter, args=(self.broker, hosts[p :: a.procs], t0, spec, outs[p]))
            for p in range(a.procs)
        ]
        for p in procs:
            p.start()
        seen: list[tuple[int, int, int, float]] = []  # (run, shard, done, first time shown)
        shown: dict[tuple[int, int], int] = {}
        backlog: list[int] = []
        events_backlog: list[int] = []
        at_end: int | None = None
        i = 0
        while time.time() < t0 + a.seconds + 1:
            run_id = tracked[i % len(tracked)]
            i += 1
            body = requests.get(f"{self.base}/api/v1/runs/{run_id}/", headers=self.headers, timeout=30).json()
            now = time.time()
            for s in body.get("shards", []):
                key = (run_id, int(s["index"]))
                if int(s["done"]) > shown.get(key, 0):
                    shown[key] = int(s["done"])
                    seen.append((run_id, key[1], int(s["done"]), now))
            if i % 20 == 0:
                backlog.append(self.queued())
                events_backlog.append(self.queued("hb.events"))
            if at_end is None and now >= t0 + a.seconds - 0.5:
                # Just before the shards end: what the window's ticks left queued.
                at_end = self.queued() + self.queued("hb.events")
            time.sleep(0.1)
        queued_at_end = at_end or 0
        say(f"  hb.events backlog during the window (every 2 s): {events_backlog}")
        for p in procs:
            p.join(timeout=600)
        results = [json.loads(Path(o).read_text()) for o in outs]
        return self._figures(runs, results, seen, backlog, queued_at_end)

    def _figures(
        self,
        runs: list[int],
        results: list[dict[str, Any]],
        seen: list[tuple[int, int, int, float]],
        backlog: list[int],
        queued_at_end: int,
    ) -> dict[str, float]:
        from apps.runs.models import Run

        a = self.args
        # Lag: each value made on a host, until the API first showed it or more.
        shown_at: dict[tuple[int, int], list[tuple[int, float]]] = {}
        for r, k, done, t in seen:
            shown_at.setdefault((r, k), []).append((done, t))
        lags = []
        horizon = max(t for *_, t in seen) if seen else time.time()
        for res in results:
            for r, k, done, t_made in res["made"]:
                first = next((t for d, t in shown_at.get((r, k), []) if d >= done), horizon)
                lags.append(max(0.0, first - t_made))
        # Fan-in: from each run's last shard_succeeded leaving a host to its claim for evaluation.
        last: dict[int, float] = {}
        for res in results:
            for r, t in res["last_succeeded"].items():
                last[int(r)] = max(last.get(int(r), 0.0), t)
        deadline = time.monotonic() + a.drain_s
        while time.monotonic() < deadline:
            if not Run.objects.filter(pk__in=runs, state=Run.State.RUNNING).exists():
                break
            time.sleep(0.5)
        fanins = []
        for r, at in Run.objects.filter(pk__in=runs).values_list("pk", "stage_sent_at"):
            fanins.append(at.timestamp() - last[r] if at is not None else float(a.drain_s))
        ticks = sum(res["ticks"] for res in results)
        heartbeats = sum(res["heartbeats"] for res in results)
        messages = sum(res["messages"] for res in results)
        events = sum(res["events"] for res in results)
        per_message = events / messages if messages else 1.0
        absorbed = ticks + heartbeats - queued_at_end * per_message
        say(
            f"  hosts={a.hosts} shards/host={a.shards} runs={len(runs)} legacy={a.legacy} "
            f"controls={a.controls}: {ticks} ticks, {heartbeats} heartbeats, {messages} messages "
            f"({per_message:.1f} events each); control queue max {max(backlog or [0])}, "
            f"{queued_at_end} at the window's end"
        )
        say(
            f"  lag: {len(lags)} values, median {statistics.median(lags) if lags else float('nan'):.2f} s, "
            f"p95 {_p95(lags):.2f} s; fan-in: median {statistics.median(fanins):.2f} s, "
            f"p95 {_p95(fanins):.2f} s, {sum(1 for f in fanins if f >= a.drain_s)} runs not claimed"
        )
        return {
            "events_per_s": max(0.0, absorbed) / a.seconds,
            "lag": _p95(lags),
            "fanin": _p95(fanins),
        }


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=125)
    ap.add_argument("--shards", type=int, default=8, help="running shards per host")
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--controls", type=int, default=1, help="control worker processes (concurrency 2 each)")
    ap.add_argument("--procs", type=int, default=4, help="emitter processes playing the hosts")
    ap.add_argument("--flush-s", type=float, default=1.0, help="the hosts' HYPERBENCH_EVENT_FLUSH_S")
    ap.add_argument("--drain-s", type=int, default=120, help="how long to wait for the fan-in at the end")
    ap.add_argument("--legacy", action="store_true", help="one message per event (before the batches)")
    args = ap.parse_args()
    if (args.hosts * args.shards) % SHARDS_PER_RUN:
        ap.error(f"hosts * shards must be a multiple of {SHARDS_PER_RUN} (shards per run)")
    bench = Bench(args)
    try:
        bench.start()
        fig = bench.run()
    finally:
        bench.stop()
    print(
        f"control: shards={args.hosts * args.shards} events_per_s={fig['events_per_s']:.0f} "
        f"progress_lag_p95_s={fig['lag']:.2f} fanin_s={fig['fanin']:.2f}"
    )


if __name__ == "__main__":
    main()
