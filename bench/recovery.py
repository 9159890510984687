"""Benchmark: recovery of a sharded run from a killed host, and how fast a cancel frees the machines.

    make bench-recovery            # or: .venv/bin/python bench/recovery.py [--rounds 3]

On a stack of its own (its own Redis on a free port, its own SQLite DB and var
directory under var/bench/recovery, the web app on a free port, one control
worker with beat, three host workers), with the platform's default timings
(heartbeat 30 s, silence 90 s, quiet window 300 s, reconciler every 10 s):

1. ``undisturbed``: a 3-shard run of the testkit ``slow`` model (24 samples,
   ``sleep_s`` per sample), from the API call that starts it to ``succeeded``.
2. ``kill_host``: the same run; when the first shard has made progress, the
   host worker running it is killed with ``kill -9`` (its whole process group)
   and started again at once. ``kill_host_extra_s`` = its median minus the
   undisturbed median: what the death of a host costs the run.
3. ``cancel``: the same run, cancelled through the API once all three shards
   run; ``cancel_stop_s`` = seconds from the cancel call until no container of
   the run exists on the engine.

Rounds alternate the three; figures are medians. The last line is::

    recovery: undisturbed_s=<x> kill_host_extra_s=<x> cancel_stop_s=<x>

Goals (issue 8): ``kill_host_extra_s`` <= 60, ``cancel_stop_s`` <= 10.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

from benchstack import VERSION, FileStack, say

from hyperbench_web.devstack import REPO


class Bench(FileStack):
    def __init__(self, samples: int, sleep_s: float) -> None:
        super().__init__("recovery", hosts=3)
        self.samples, self.sleep_s = samples, sleep_s

    # --- set-up -------------------------------------------------------------------------
    def start(self) -> None:
        super().start()
        ds = self.var / "datasets" / "bench-slow" / "1"
        subprocess.run(
            [
                sys.executable,
                "scripts/make_sample_dataset.py",
                "--out",
                str(ds),
                "--count",
                str(self.samples),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        dataset = self.api("POST", "/api/v1/datasets/", json={"uri": ds.as_uri() + "/"})
        model = {
            "name": "slowpoke",
            "image": f"hyperbench/testkit:{VERSION}",
            "digest": self.image_id("testkit"),
        }
        self.api("POST", "/api/v1/models/", json=model)
        self.experiment = self.api(
            "POST",
            "/api/v1/experiments/",
            json={
                "name": "bench",
                "model": "slowpoke",
                "dataset": dataset["id"],
                "params": {"mode": "slow", "sleep_s": self.sleep_s},
            },
        )["id"]
        # Every host has said hello (the shards are spread over the hosts that did).
        while len([h for h in self.api("GET", "/api/v1/hosts/")["results"] if not h.get("silent")]) < 3:
            time.sleep(0.5)

    def run(self) -> int:
        # reuse off: every round infers every sample (with the prediction cache, a second run of
        # one experiment would infer nothing and measure nothing).
        body = {"experiment": self.experiment, "shards": 3, "reuse": False}
        return int(self.api("POST", "/api/v1/runs/", json=body)["id"])

    def get(self, run_id: int) -> dict[str, Any]:
        return dict(self.api("GET", f"/api/v1/runs/{run_id}/"))

    def wait(self, run_id: int, timeout_s: float = 900) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            data = self.get(run_id)
            if data["state"] in ("succeeded", "failed", "cancelled"):
                return data
            time.sleep(0.25)
        raise RuntimeError(f"run {run_id} did not finish in {timeout_s}s")

    def containers(self, run_id: int) -> list[Any]:
        return list(
            self.engine.containers.list(
                all=True, ignore_removed=True, filters={"label": f"org.hyperbench.run={run_id}"}
            )
        )

    # --- the three measurements ---------------------------------------------------------
    def undisturbed(self) -> float:
        t0 = time.monotonic()
        data = self.wait(self.run())
        if data["state"] != "succeeded":
            raise RuntimeError(f"undisturbed run failed: {data['error_reason']}")
        return time.monotonic() - t0

    def kill_host(self) -> float:
        assert self.stack is not None
        t0 = time.monotonic()
        run_id = self.run()
        victim = ""
        while not victim:
            data = self.get(run_id)
            for s in data["shards"]:
                if s["done"] >= 1 and s["host"]:
                    victim = next(n for n in self.stack.host_names if self.stack.hostname(n) == s["host"])
            time.sleep(0.2)
        pid = self.stack.pid(victim)
        assert pid is not None
        os.killpg(pid, signal.SIGKILL)
        while self.stack.pid(victim):
            time.sleep(0.05)
        self.stack.start([victim])
        data = self.wait(run_id)
        if data["state"] != "succeeded":
            raise RuntimeError(f"killed run failed: {data['error_reason']}")
        return time.monotonic() - t0

    def cancel(self) -> float:
        run_id = self.run()
        deadline = time.monotonic() + 300
        while len([c for c in self.containers(run_id) if c.status == "running"]) < 3:
            if time.monotonic() > deadline:
                raise RuntimeError("the three shards never ran at once")
            time.sleep(0.2)
        t0 = time.monotonic()
        self.api("POST", f"/api/v1/runs/{run_id}/cancel/")
        while self.containers(run_id):
            time.sleep(0.05)
        return time.monotonic() - t0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--sleep-s", type=float, default=1.0)
    args = parser.parse_args()
    bench = Bench(args.samples, args.sleep_s)
    figures: dict[str, list[float]] = {"undisturbed": [], "kill_host": [], "cancel": []}
    try:
        say("starting a stack of three host workers ...")
        bench.start()
        for r in range(args.rounds):
            for name in figures:
                seconds = getattr(bench, name)()
                figures[name].append(seconds)
                say(f"round {r + 1}: {name} {seconds:.1f}s")
    finally:
        bench.stop()
    med = {k: statistics.median(v) for k, v in figures.items()}
    say(f"medians of {args.rounds}: " + ", ".join(f"{k} {v:.1f}s" for k, v in med.items()))
    print(
        f"recovery: undisturbed_s={med['undisturbed']:.1f} "
        f"kill_host_extra_s={med['kill_host'] - med['undisturbed']:.1f} cancel_stop_s={med['cancel']:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
