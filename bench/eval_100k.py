"""Time the eval image's code on a generated 100,000-sample run (OCR and VQA), in-process.

Writes a dataset dir (dataset.json + manifest.jsonl; scoring reads no image)
and a predictions.jsonl per task under a temporary directory, then runs
``images/eval/evaluate.py``'s ``main()`` in this process with HB_DATA_DIR /
HB_PREDICTIONS / HB_OUTPUT_DIR set, and prints its wall time. The data are
drawn from a fixed seed: every run scores the same inputs.

    python bench/eval_100k.py                      # ocr and vqa, 100,000 samples each
    python bench/eval_100k.py --task ocr --profile # cProfile's top functions on stderr
    python bench/eval_100k.py --baseline 16187f3   # also the eval code of that git commit

``--baseline REF`` runs the eval files of git commit REF (``git show``, into a
temporary dir) on the same inputs in a subprocess (its time includes Python's
start, ~0.1 s), and compares the outputs: metrics.json without ``elapsed_s``
and per_sample.jsonl must be byte-identical (``identical=yes``).

One line per task on stdout, the last one for the last task:

    eval: samples=100000 seconds=<x> [baseline_seconds=<x>] task=<ocr|vqa> [identical=<yes|no>]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EVAL_DIR = ROOT / "images" / "eval"
CATEGORIES = ("invoice", "receipt", "form", "letter", "table")
WORDS = [
    "total",
    "amount",
    "invoice",
    "date",
    "the",
    "of",
    "and",
    "to",
    "a",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "number",
    "customer",
    "address",
    "payment",
    "due",
    "tax",
    "net",
    "gross",
    "order",
    "item",
    "quantity",
    "price",
    "Straße",
    "café",
    "naïve",
    "1,234.56",
    "12/05/2024",
    "No.",
    "#4711",
    "(ref)",
    "A-17",
    "€",
    "99%",
]


def _edit(text: str, rng: random.Random, rate: float) -> str:
    """The text with about `rate` of its characters substituted, deleted or doubled."""
    out: list[str] = []
    for ch in text:
        r = rng.random()
        if r < rate / 3:
            out.append(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 "))
        elif r < 2 * rate / 3:
            continue
        elif r < rate:
            out.append(ch + ch)
        else:
            out.append(ch)
    return "".join(out)


def _prediction(i: int, text: str | None, rng: random.Random) -> dict[str, Any] | None:
    """A prediction line: ~1% missing (None), ~2% errors, the rest `text` with a latency."""
    r = rng.random()
    if r < 0.01:
        return None
    latency = round(rng.uniform(5, 400), 3)
    if r < 0.03:
        return {"id": f"s{i:06d}", "prediction": None, "latency_ms": latency, "error": "CUDA out of memory"}
    return {"id": f"s{i:06d}", "prediction": text, "latency_ms": latency, "error": None}


def make_ocr(n: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    manifest, preds = [], []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(0 if i % 997 == 0 else 3, 25))]
        sep = rng.choice((" ", " ", "\n", "  "))
        ref = sep.join(words)
        manifest.append(
            {"id": f"s{i:06d}", "image": f"images/s{i:06d}.png", "text": ref, "category": CATEGORIES[i % 5]}
        )
        hyp = "" if rng.random() < 0.005 else _edit(ref, rng, rng.choice((0.0, 0.02, 0.05, 0.2)))
        if (p := _prediction(i, hyp, rng)) is not None:
            preds.append(p)
    return manifest, preds


def make_vqa(n: int, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    manifest, preds = [], []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # a number (relaxed accuracy)
            value = round(rng.uniform(0, 5000), rng.choice((0, 1, 2)))
            answers = [f"{value:g}"]
            hyp = f"{value * rng.choice((1, 1, 1.03, 1.2)):g}"
        elif kind == 1:  # ten VQA v2-style answers
            pool = [rng.choice(WORDS).lower() for _ in range(3)]
            answers = [rng.choice(pool) for _ in range(10)]
            hyp = rng.choice([*pool, "yes", "two"])
        elif kind == 2:  # a DocVQA-style phrase
            answers = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))]
            hyp = _edit(answers[0], rng, rng.choice((0.0, 0.1, 0.4)))
        else:  # two alternatives, sometimes empty (no reference)
            answers = ["", ""] if i % 499 == 3 else [rng.choice(WORDS), rng.choice(WORDS).upper()]
            hyp = rng.choice(answers) + rng.choice(("", ".", " "))
        sample: dict[str, Any] = {
            "id": f"s{i:06d}",
            "image": f"images/s{i:06d}.png",
            "question": f"What is field {i}?",
            "answers": answers,
            "category": CATEGORIES[i % 5],
        }
        if i % 50 == 7:
            sample["dataset_name"] = "HME100k"
        manifest.append(sample)
        if (p := _prediction(i, hyp, rng)) is not None:
            preds.append(p)
    return manifest, preds


def write_run(base: Path, task: str, n: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(f"{task}-{seed}")
    manifest, preds = (make_ocr if task == "ocr" else make_vqa)(n, rng)
    data = base / f"{task}-data"
    data.mkdir(parents=True)
    (data / "dataset.json").write_text(json.dumps({"task": task, "name": f"bench-{task}", "version": "1"}))
    lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in manifest)
    (data / "manifest.jsonl").write_text("".join(lines), encoding="utf-8")
    predictions = base / f"{task}-predictions.jsonl"
    predictions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in preds), encoding="utf-8")
    return data, predictions


def _env(data: Path, predictions: Path, out: Path) -> dict[str, str]:
    return {"HB_DATA_DIR": str(data), "HB_PREDICTIONS": str(predictions), "HB_OUTPUT_DIR": str(out)}


def run_current(data: Path, predictions: Path, out: Path, profile: bool) -> float:
    """evaluate.main() of this checkout, in this process; its wall time."""
    sys.path.insert(0, str(EVAL_DIR))
    import evaluate

    os.environ.update(_env(data, predictions, out))
    prof = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if prof is not None:
        prof.enable()
    rc = evaluate.main()
    if prof is not None:
        prof.disable()
    seconds = time.perf_counter() - started
    if rc != 0:
        raise SystemExit(f"evaluate.main() returned {rc}")
    if prof is not None:
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return seconds


def run_baseline(ref: str, base: Path, data: Path, predictions: Path, out: Path) -> float:
    """The eval files of git commit `ref`, in a subprocess on the same inputs; its wall time."""
    code = base / "baseline-code"
    code.mkdir(exist_ok=True)

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
        ).stdout

    for path in git("ls-tree", "--name-only", ref, "images/eval/").split():
        if path.endswith(".py"):
            (code / Path(path).name).write_text(git("show", f"{ref}:{path}"), encoding="utf-8")
    env = {**os.environ, **_env(data, predictions, out)}
    started = time.perf_counter()
    subprocess.run([sys.executable, str(code / "evaluate.py")], check=True, env=env)
    return time.perf_counter() - started


def same_outputs(a: Path, b: Path) -> bool:
    ma = json.loads((a / "metrics.json").read_text(encoding="utf-8"))
    mb = json.loads((b / "metrics.json").read_text(encoding="utf-8"))
    for m in (ma, mb):
        m.pop("elapsed_s", None)
    same = ma == mb
    if not same:
        for key in sorted(set(ma) | set(mb)):
            if ma.get(key) != mb.get(key):
                print(f"eval: {key}: {ma.get(key)} != {mb.get(key)}", file=sys.stderr)
    if (a / "per_sample.jsonl").read_bytes() != (b / "per_sample.jsonl").read_bytes():
        print("eval: per_sample.jsonl differs", file=sys.stderr)
        same = False
    return same


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=100_000)
    ap.add_argument("--task", choices=("ocr", "vqa", "both"), default="both")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--profile", action="store_true", help="cProfile the in-process evaluation (stderr)")
    ap.add_argument("--baseline", metavar="REF", help="also run the eval code of git commit REF and compare")
    args = ap.parse_args()
    tasks = ("ocr", "vqa") if args.task == "both" else (args.task,)
    lines = []
    with tempfile.TemporaryDirectory(prefix="hb-eval-bench-") as tmp:
        base = Path(tmp)
        for task in tasks:
            t0 = time.perf_counter()
            data, predictions = write_run(base, task, args.samples, args.seed)
            print(f"eval: {task}: generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            out = base / f"{task}-out"
            seconds = run_current(data, predictions, out, args.profile)
            line = f"eval: samples={args.samples} seconds={seconds:.2f}"
            if args.baseline:
                out_b = base / f"{task}-out-baseline"
                baseline = run_baseline(args.baseline, base, data, predictions, out_b)
                identical = same_outputs(out, out_b)
                same = "yes" if identical else "no"
                line += f" baseline_seconds={baseline:.2f} task={task} identical={same}"
            else:
                line += f" task={task}"
            print(line, file=sys.stderr)
            lines.append(line)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
