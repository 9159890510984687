"""testkit: a contract-following model whose behaviour the test chooses.

params.json ``{"params": {"mode": ...}}``:
    echo    predict the sample id (exit 0)
    exit    write the first prediction, then exit 3 with a message on stderr
    hang    ignore SIGTERM and sleep forever
    slow    sleep ``sleep_s`` (default 1) before each prediction, reporting progress
    oom     allocate memory until the kernel kills the container

and, with any mode:
    fail_ids  ids whose line is a per-sample error (prediction null, error set),
              as a model that cannot read one page writes it; the rest are predicted
    exit_ids  ids at which the container exits 3 before predicting them (a crash on
              a given sample: the lines before it stay written)

It always prints the ids it was sent on stderr first (``testkit: received N: id ...``),
so a test reads from the kept container log what reached the model.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

JOB = Path("/job")


def main() -> int:
    params = json.loads((JOB / "params.json").read_text()).get("params", {})
    mode = str(params.get("mode", "echo"))
    samples = [json.loads(line) for line in (JOB / "input.jsonl").read_text().splitlines() if line.strip()]
    fail_ids = {str(i) for i in params.get("fail_ids", [])}
    exit_ids = {str(i) for i in params.get("exit_ids", [])}
    print(f"testkit: received {len(samples)}: {' '.join(str(s['id']) for s in samples)}", file=sys.stderr)
    out = JOB / "output" / "predictions.jsonl"
    with open(out, "w", encoding="utf-8") as f:
        for i, s in enumerate(samples):
            if mode == "exit" and i == 1:
                print("testkit: failing on purpose after 1 sample", file=sys.stderr)
                return 3
            if str(s["id"]) in exit_ids:
                print(f"testkit: failing on purpose at sample {s['id']}", file=sys.stderr)
                return 3
            if mode == "slow":
                time.sleep(float(params.get("sleep_s", 1)))
            if str(s["id"]) in fail_ids:
                row = {
                    "id": s["id"],
                    "prediction": None,
                    "latency_ms": None,
                    "error": "testkit: failing on purpose",
                }
            else:
                row = {"id": s["id"], "prediction": s["id"], "latency_ms": 0.0, "error": None}
            f.write(json.dumps(row) + "\n")
            f.flush()
            progress = json.dumps({"done": i + 1, "total": len(samples)})
            (JOB / "output" / "progress.json").write_text(progress)
            if mode == "hang":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                while True:
                    time.sleep(1)
            if mode == "oom":
                hog = []
                while True:
                    hog.append(bytearray(64 * 1024 * 1024))
    (JOB / "output" / "progress.json").write_text(json.dumps({"done": len(samples), "total": len(samples)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
