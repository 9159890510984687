"""Benchmark: nothing computed twice. The demo's experiment cold then warm, and re-scoring.

    make bench-reuse            # or: .venv/bin/python bench/reuse.py [--rounds 3] [--samples-100k 100000]

On a stack of its own (its own Redis on a free port, its own SQLite DB and var directory
under var/bench/reuse, the web app on a free port, one control worker with beat, one host
worker), through the REST API:

1. ``cold``: the demo's experiment (``hyperbench/ocr-rapidocr`` on the sample dataset of
   ``make demo``, ``scripts/make_sample_dataset.py``'s default size), a run with
   ``"reuse": false`` (every sample inferred), from the API call to ``succeeded``.
2. ``warm``: right after, a run of the same experiment with reuse on (every sample a cache
   hit: no model container), the same way.
3. ``rescore``: ``POST /api/v1/runs/{cold}/rescore/`` until its evaluation has succeeded
   (evaluate + report on the stored predictions, today's eval image).

Rounds repeat the three; figures are medians. Then ``rescore_100k``: the eval container
(the same launcher and limits the host uses, ``worker.containers.run``) on a generated
100,000-sample OCR run (``bench/eval_100k.py``'s data): the scoring a rescore of such a run
runs. It is not the whole platform path (no predictions download, report or events): a
100,000-sample dataset registered on this 2-core machine would take longer to set up than
the figure measures. The last line is::

    reuse: warm_vs_cold=<warm / cold wall time> rescore_s=<x> rescore_100k_s=<x>

Goals (issue 11): ``warm_vs_cold`` <= 0.15, ``rescore_100k_s`` <= 15.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchstack import VERSION, FileStack, say

from hyperbench_web.devstack import REPO
from worker import containers


class Bench(FileStack):
    def __init__(self) -> None:
        super().__init__("reuse", hosts=1)

    def start(self) -> None:
        super().start()
        ds = self.var / "datasets" / "sample-docs" / "1"
        subprocess.run(
            [sys.executable, "scripts/make_sample_dataset.py", "--out", str(ds)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        dataset = self.api("POST", "/api/v1/datasets/", json={"uri": ds.as_uri() + "/"})
        image = f"hyperbench/ocr-rapidocr:{VERSION}"
        self.api(
            "POST",
            "/api/v1/models/",
            json={"name": "rapidocr", "image": image, "digest": self.image_id("ocr-rapidocr")},
        )
        body = {"name": "demo: rapidocr on sample-docs", "model": "rapidocr", "dataset": dataset["id"]}
        self.experiment = self.api("POST", "/api/v1/experiments/", json=body)["id"]

    def run(self, *, reuse: bool) -> tuple[float, dict[str, Any]]:
        t0 = time.monotonic()
        run_id = self.api("POST", "/api/v1/runs/", json={"experiment": self.experiment, "reuse": reuse})["id"]
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            data = dict(self.api("GET", f"/api/v1/runs/{run_id}/"))
            if data["state"] in ("succeeded", "failed", "cancelled"):
                if data["state"] != "succeeded":
                    raise RuntimeError(f"run {run_id} {data['state']}: {data['error_reason']}")
                return time.monotonic() - t0, data
            time.sleep(0.2)
        raise RuntimeError(f"run {run_id} did not finish")

    def rescore(self, run_id: int) -> float:
        t0 = time.monotonic()
        ev = self.api("POST", f"/api/v1/runs/{run_id}/rescore/")["id"]
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            evs = {e["id"]: e for e in self.api("GET", f"/api/v1/runs/{run_id}/")["evaluations"]}
            if evs[ev]["state"] == "succeeded":
                return time.monotonic() - t0
            if evs[ev]["state"] == "failed":
                raise RuntimeError(f"rescore {ev} failed: {evs[ev]['error_reason']}")
            time.sleep(0.2)
        raise RuntimeError(f"rescore {ev} did not finish")


def rescore_100k(samples: int, eval_digest: str, var: Path) -> float:
    """The eval container on a generated ``samples``-sample OCR run, as the host starts it."""
    spec = importlib.util.spec_from_file_location("eval_100k", REPO / "bench" / "eval_100k.py")
    assert spec is not None
    assert spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    with tempfile.TemporaryDirectory(prefix="hb-rescore100k-", dir=var) as tmp:
        base = Path(tmp)
        base.chmod(0o755)
        data, predictions = gen.write_run(base, "ocr", samples, 1)
        out = base / "output"
        out.mkdir()
        out.chmod(0o777)
        for p in (data, data / "dataset.json", data / "manifest.jsonl", predictions):
            p.chmod(0o755 if p.is_dir() else 0o644)
        cspec = containers.ContainerSpec(
            image=f"hyperbench/eval:{VERSION}",
            digest=eval_digest,
            mounts=[
                containers.BindMount(data, "/data"),
                containers.BindMount(predictions, "/job/predictions.jsonl"),
                containers.BindMount(out, "/job/output", read_only=False),
            ],
            labels={"org.hyperbench.stage": "bench-rescore"},
            timeout_s=600,
            memory_mb=4096,
            cpus=2.0,
            pids=256,
        )
        t0 = time.monotonic()
        result = containers.run(cspec)
        seconds = time.monotonic() - t0
        if result.exit_code != 0 or not (out / "metrics.json").is_file():
            raise RuntimeError(f"the eval container failed: {result.log_tail[-2000:]}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples-100k", type=int, default=100_000)
    args = parser.parse_args()
    bench = Bench()
    figures: dict[str, list[float]] = {"cold": [], "warm": [], "rescore": []}
    try:
        say("starting a stack with one host worker ...")
        bench.start()
        for r in range(args.rounds):
            cold_s, cold = bench.run(reuse=False)
            warm_s, warm = bench.run(reuse=True)
            if warm["cache"]["misses"] != 0:
                raise RuntimeError(f"the warm run inferred samples: {warm['cache']}")
            rescore_s = bench.rescore(int(cold["id"]))
            for k, v in (("cold", cold_s), ("warm", warm_s), ("rescore", rescore_s)):
                figures[k].append(v)
            say(
                f"round {r + 1}: cold {cold_s:.1f}s ({cold['cache']}), warm {warm_s:.1f}s "
                f"({warm['cache']}), rescore {rescore_s:.1f}s"
            )
    finally:
        bench.stop()
    say(f"the eval container on a generated {args.samples_100k}-sample OCR run ...")
    big = rescore_100k(args.samples_100k, bench.image_id("eval"), bench.var)
    med = {k: statistics.median(v) for k, v in figures.items()}
    say(f"medians of {args.rounds}: " + ", ".join(f"{k} {v:.2f}s" for k, v in med.items()))
    print(
        f"reuse: warm_vs_cold={med['warm'] / med['cold']:.3f} rescore_s={med['rescore']:.1f} "
        f"rescore_100k_s={big:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
