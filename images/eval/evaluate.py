"""HyperBench eval image: score predictions against a dataset's ground truth.

Inputs (container contract v1, eval flavour):
  /data/dataset.json           {"task": "ocr" | "vqa" | "table" | "kie" | "page", ...}
  /data/manifest.jsonl         ground truth: id + text (ocr), question + answers (vqa),
                               html (table), fields (kie) or markdown (page)
  /job/predictions.jsonl       {"id", "prediction", "latency_ms", "error"}
Outputs:
  /job/output/metrics.json     aggregates with bootstrap 95% CIs
  /job/output/per_sample.jsonl one line per manifest sample

HB_DATA_DIR, HB_JOB_DIR, HB_PREDICTIONS and HB_OUTPUT_DIR move the paths (tests).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# hb_metrics / hb_stats / hb_bootstrap / hb_io live beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

import hb_bootstrap
import hb_kie
import hb_metrics as hm
import hb_page
import hb_stats
import hb_table
from hb_io import atomic_write

METRIC_VERSION = hm.METRIC_VERSION
BOOTSTRAP_RESAMPLES = hb_stats.BOOTSTRAP_RESAMPLES
BOOTSTRAP_SEED = hb_stats.BOOTSTRAP_SEED
# The document tasks: each module scores one sample (score_sample) and keeps its own metric version.
DOC_TASKS: dict[str, Any] = {"table": hb_table, "kie": hb_kie, "page": hb_page}
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "ocr": hm.OCR_METRICS,
    "vqa": hm.VQA_METRICS,
    "table": hb_table.TABLE_METRICS,
    "kie": hb_kie.KIE_METRICS,
    "page": hb_page.PAGE_METRICS,
}


def _env_path(name: str, default: str) -> Path:
    return Path(os.environ.get(name, default))


def data_dir() -> Path:
    return _env_path("HB_DATA_DIR", "/data")


def job_dir() -> Path:
    return _env_path("HB_JOB_DIR", "/job")


def predictions_file() -> Path:
    return Path(os.environ.get("HB_PREDICTIONS", str(job_dir() / "predictions.jsonl")))


def output_dir() -> Path:
    return Path(os.environ.get("HB_OUTPUT_DIR", str(job_dir() / "output")))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                if not line.endswith("\n"):
                    # A torn last line (writer killed mid-line): ignore it.
                    break
                raise ValueError(f"{path}:{lineno}: invalid JSON: {exc}") from exc
            if not isinstance(obj, dict) or "id" not in obj:
                raise ValueError(f"{path}:{lineno}: expected an object with an 'id'")
            rows.append(obj)
    return rows


@dataclass
class Prediction:
    text: str
    failed: bool  # missing or error set
    reason: str | None
    latency_ms: float | None


@dataclass
class Scored:
    per_sample: list[dict[str, Any]] = field(default_factory=list)
    errors: int = 0
    missing: int = 0
    no_reference: int = 0


def load_predictions(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """Predictions by id (the last line of an id wins) and the number of duplicate lines."""
    by_id: dict[str, dict[str, Any]] = {}
    duplicates = 0
    if not path.exists():
        return by_id, 0
    for row in read_jsonl(path):
        key = str(row["id"])
        if key in by_id:
            duplicates += 1
        by_id[key] = row
    return by_id, duplicates


def prediction_for(row: dict[str, Any] | None) -> Prediction:
    if row is None:
        return Prediction("", True, "missing prediction", None)
    latency = row.get("latency_ms")
    latency_ms = None
    if isinstance(latency, int | float) and not isinstance(latency, bool):
        latency_ms = float(latency)
    if row.get("error"):
        return Prediction("", True, str(row["error"]), latency_ms)
    pred = row.get("prediction")
    return Prediction("" if pred is None else str(pred), False, None, latency_ms)


def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 6)


def _base_row(sample: dict[str, Any], p: Prediction, row: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": sample["id"],
        "image": sample.get("image"),
        "prediction": None if p.failed else p.text,
        "error": p.reason if p.failed else None,
        "missing": row is None,
        "latency_ms": p.latency_ms,
        "metric_version": METRIC_VERSION,
    }
    for key in ("category", "type", "dataset_name"):
        if isinstance(sample.get(key), str | int):
            out[key] = sample[key]
    return out


def score_ocr(manifest: list[dict[str, Any]], preds: dict[str, dict[str, Any]]) -> Scored:
    scored = Scored()
    for sample in manifest:
        row = preds.get(str(sample["id"]))
        p = prediction_for(row)
        scored.missing += row is None
        scored.errors += p.failed
        reference = str(sample.get("text") or "")
        s = hm.ocr_score(reference, p.text)  # a failed sample enters the corpus counts as ""
        out = _base_row(sample, p, row)
        out.update(
            {
                "reference": reference,
                "ref_chars": len(hm.normalize_ocr(reference)),
                "char_edits": s.char_edits,
                "char_ref_len": s.char_ref_len,
                "word_edits": s.word_edits,
                "word_ref_len": s.word_ref_len,
                # per-sample scores of a failed sample are the worst value (POLICY)
                "cer": 1.0 if p.failed else round(s.cer, 6),
                "wer": 1.0 if p.failed else round(s.wer, 6),
                "ned": 1.0 if p.failed else round(s.ned, 6),
            }
        )
        scored.per_sample.append(out)
    return scored


def _answers(sample: dict[str, Any]) -> list[str]:
    raw = sample.get("answers")
    if raw is None:
        return []
    return [str(a) for a in raw] if isinstance(raw, list) else [str(raw)]


def score_vqa(manifest: list[dict[str, Any]], preds: dict[str, dict[str, Any]]) -> Scored:
    scored = Scored()
    for sample in manifest:
        row = preds.get(str(sample["id"]))
        p = prediction_for(row)
        scored.missing += row is None
        scored.errors += p.failed
        answers = _answers(sample)
        has_reference = any(a.strip() for a in answers)
        scored.no_reference += not has_reference
        if p.failed or not has_reference:
            scores = dict.fromkeys(hm.VQA_METRICS, 0.0)
        else:
            scores = hm.vqa_scores(p.text, answers, sample)
        out = _base_row(sample, p, row)
        out.update(
            {
                "question": sample.get("question"),
                "answers": answers,
                "reference": answers[0] if answers else "",
                "ref_chars": max((len(a) for a in answers), default=0),
                **{k: round(v, 6) for k, v in scores.items()},
            }
        )
        scored.per_sample.append(out)
    return scored


def score_doc_task(task: str, manifest: list[dict[str, Any]], preds: dict[str, dict[str, Any]]) -> Scored:
    """table / kie / page: the module scores each sample (None for a failed prediction)."""
    module = DOC_TASKS[task]
    scored = Scored()
    for sample in manifest:
        row = preds.get(str(sample["id"]))
        p = prediction_for(row)
        scored.missing += row is None
        scored.errors += p.failed
        fields, has_reference = module.score_sample(sample, None if p.failed else p.text)
        scored.no_reference += not has_reference
        out = _base_row(sample, p, row)
        out.update(fields)
        out["metric_version"] = module.METRIC_VERSION
        scored.per_sample.append(out)
    return scored


def metric_names(task: str, dataset: dict[str, Any]) -> list[str]:
    """The task's metrics, primary first; dataset.json may narrow them with "metrics": [...]."""
    allowed = list(TASK_METRICS[task])
    wanted = dataset.get("metrics")
    if isinstance(wanted, list) and wanted:
        unknown = [m for m in wanted if m not in allowed]
        if unknown:
            raise ValueError(f"dataset.json: metrics {unknown} are not {task} metrics (one of {allowed})")
        return [str(m) for m in wanted]
    return allowed


def by_category(per_sample: list[dict[str, Any]], primary: str) -> dict[str, dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in per_sample:
        if "category" in r:
            groups.setdefault(str(r["category"]), []).append(r)
    out: dict[str, dict[str, Any]] = {}
    for name, rows in sorted(groups.items()):
        stat = hb_stats.statistic_for(primary, rows)
        out[name] = {
            "n": len(rows),
            "errors": sum(1 for r in rows if r.get("error")),
            primary: _clean(stat(range(len(rows)))) if stat else None,
        }
    return out


def latency_summary(per_sample: list[dict[str, Any]]) -> dict[str, float | None]:
    lat = sorted(float(r["latency_ms"]) for r in per_sample if r.get("latency_ms") is not None)
    if not lat:
        return {"mean": None, "p50": None, "p95": None, "max": None}
    return {
        "mean": round(sum(lat) / len(lat), 3),
        "p50": round(hb_stats.percentile(lat, 50), 3),
        "p95": round(hb_stats.percentile(lat, 95), 3),
        "max": round(lat[-1], 3),
    }


def evaluate(
    data: Path, predictions: Path, out: Path, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> dict[str, Any]:
    started = time.time()
    dataset = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    task = dataset.get("task")
    if task not in TASK_METRICS:
        raise ValueError(f"dataset.json: unknown task {task!r} (expected one of {', '.join(TASK_METRICS)})")
    names = metric_names(task, dataset)
    manifest = read_jsonl(data / "manifest.jsonl")
    preds, duplicates = load_predictions(predictions)
    manifest_ids = {str(s["id"]) for s in manifest}
    unknown = sum(1 for k in preds if k not in manifest_ids)

    if task in DOC_TASKS:
        scored = score_doc_task(task, manifest, preds)
    else:
        scored = score_ocr(manifest, preds) if task == "ocr" else score_vqa(manifest, preds)
    rows = scored.per_sample
    columns = {name: cols for name in names if (cols := hb_stats.columns_for(name, rows)) is not None}
    stats = {name: hb_stats.statistic_of(cols) for name, cols in columns.items()}
    everything = range(len(rows))
    values = {name: stat(everything) if rows else math.nan for name, stat in stats.items()}
    cis = hb_bootstrap.bootstrap_ci(len(rows), columns, resamples, seed)  # = hb_stats.bootstrap_ci, in numpy
    metrics = {
        name: {"value": _clean(values[name]), "ci95": [_clean(cis[name][0]), _clean(cis[name][1])]}
        for name in stats
    }
    primary = names[0]
    doc: dict[str, Any] = {
        "metrics": metrics,
        "primary_metric": primary,
        "lower_is_better": sorted(n for n in names if hb_stats.lower_is_better(n)),
        "metric_version": DOC_TASKS[task].METRIC_VERSION if task in DOC_TASKS else METRIC_VERSION,
        "task": task,
        "dataset": {"name": dataset.get("name"), "version": dataset.get("version")},
        "normalization": DOC_TASKS[task].NORMALIZATION if task in DOC_TASKS else hm.NORMALIZATION[task],
        "policy": {**hm.POLICY, **DOC_TASKS[task].POLICY} if task in DOC_TASKS else hm.POLICY,
        "n": len(manifest),
        "errors": scored.errors,
        "missing": scored.missing,
        "no_reference": scored.no_reference,
        "duplicates": duplicates,
        "unknown_ids": unknown,
        "latency_ms": latency_summary(rows),
        "by_category": by_category(rows, primary),
        "bootstrap": {"resamples": resamples, "seed": seed, "method": hb_stats.BOOTSTRAP_METHOD},
        "elapsed_s": round(time.time() - started, 3),
    }
    if task == "kie":  # unparsable predictions, corpus counts, per-field precision / recall / F1
        doc.update(hb_kie.summary(rows))
    atomic_write(out / "per_sample.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write(out / "metrics.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return doc


def main() -> int:
    try:
        doc = evaluate(data_dir(), predictions_file(), output_dir())
    except (OSError, ValueError) as exc:
        print(f"hyperbench-eval: ERROR: {exc}", file=sys.stderr, flush=True)
        return 2
    summary = {k: v["value"] for k, v in doc["metrics"].items()}
    print(
        f"hyperbench-eval: task={doc['task']} n={doc['n']} errors={doc['errors']} metrics={summary}",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
