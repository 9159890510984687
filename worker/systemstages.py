"""The stages that run a system image on CPU: evaluate a run, report on it, compare runs."""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from worker import containers, contract, events, hostctl, stagekit
from worker.datasync import dataset_lease, gallery_candidates
from worker.errors import HostError
from worker.nodecache import Selection
from worker.storage import artifacts_from_config, uri_join

logger = logging.getLogger(__name__)


def _ends_with_newline(path: Path) -> bool:
    size = path.stat().st_size
    if size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


def _accepted_shard_uris(spec: contract.RunSpec, shard_uris: list[str]) -> list[str]:
    """The shard predictions the control side accepted: one per shard, all under this run's artifacts."""
    if len(shard_uris) != spec["shards"]:
        raise HostError(
            f"Evaluation got {len(shard_uris)} shard predictions for a run of {spec['shards']} shards."
        )
    base = spec["artifacts_uri"].rstrip("/") + "/"
    for k, uri in enumerate(shard_uris):
        if not uri or not uri.startswith(base):
            raise HostError(f"Shard {k} has no accepted predictions under {base} (got {uri!r}).")
    return shard_uris


def _rescored_predictions(spec: contract.RunSpec, rescore: contract.Rescore) -> str:
    """The run's stored predictions a rescore scores: under the run's own artifacts, nowhere else.

    A rescore's spec keeps its outputs under ``<run artifacts>evaluations/<id>/``.
    """
    suffix = f"evaluations/{int(rescore['evaluation'])}/"
    base = spec["artifacts_uri"].rstrip("/") + "/"
    uri = str(rescore.get("predictions_uri") or "")
    if not base.endswith(suffix):
        raise HostError(f"A rescore's artifacts must be under .../{suffix} (got {base}).")
    run_base = base[: -len(suffix)]
    if not uri.startswith(run_base):
        raise HostError(f"The run has no stored predictions under {run_base} (got {uri!r}).")
    return uri


def _merge_shards(store: Any, shard_uris: list[str], merged: Path, part: Path) -> None:
    with open(merged, "wb") as f:
        for uri in shard_uris:
            store.get_file(uri, part)
            with open(part, "rb") as src:
                shutil.copyfileobj(src, f)
            if not _ends_with_newline(part):
                f.write(b"\n")  # a shard without a final newline must not glue onto the next
            part.unlink()


def evaluate_run(
    spec: contract.RunSpec,
    shard_uris: list[str],
    *,
    attempt: int = 1,
    rescore: contract.Rescore | None = None,
) -> None:
    """Merge the accepted shard predictions and score them; or, for a ``rescore``, score the run's
    stored merged predictions again (with the eval image of ``spec``, outputs under the
    evaluation's own prefix; its events name the evaluation)."""
    cfg = stagekit.config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    tag = {"evaluation": rescore["evaluation"]} if rescore else None
    if rescore:
        stored = _rescored_predictions(spec, rescore)
    else:
        # Exactly the attempts the control side recorded, never "whatever is in the shard's folder".
        shard_uris = _accepted_shard_uris(spec, shard_uris)
        if hostctl.is_cancelled(cfg, run_id):
            raise stagekit.Cancelled
    events.emit(run_id, "started", "evaluate", data=tag)
    name = f"run-{run_id}-evaluate" + (f"-rescore{rescore['evaluation']}" if rescore else "")
    with (
        # Scoring reads the manifest (the ground truth), never the images.
        dataset_lease(
            spec["dataset"],
            cfg,
            on_progress=stagekit.sync_progress(run_id, None),
            select=Selection.manifest(),
        ) as dataset_dir,
        stagekit.fence(cfg, name),
        stagekit.job_dir(cfg, f"run{run_id}-eval") as job,
    ):
        merged = job / "predictions.jsonl"
        if rescore:
            store.get_file(stored, merged)
        else:
            _merge_shards(store, shard_uris, merged, job / "shard.jsonl")
        merged.chmod(0o644)
        inputs = [
            containers.BindMount(dataset_dir, "/data"),
            containers.BindMount(merged, "/job/predictions.jsonl"),
        ]
        stagekit.run_system_stage(
            spec, cfg, store, job, stage="evaluate", attempt=attempt, inputs=inputs, cancellable=not rescore
        )
        metrics_path = job / "output" / "metrics.json"
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise HostError(f"The eval container wrote no readable metrics.json: {e}") from e
        alive = stagekit.stage_alive(run_id, "evaluate")
        keep = not rescore  # a rescore of a finished run: no cancel marker stops it
        uris = {
            "predictions_uri": stored
            if rescore
            else stagekit.put(store, cfg, spec, merged, "predictions.jsonl", alive),
            "metrics_uri": stagekit.put(
                store, cfg, spec, metrics_path, "metrics.json", alive, cancellable=keep
            ),
            "per_sample_uri": stagekit.put(
                store,
                cfg,
                spec,
                job / "output" / "per_sample.jsonl",
                "per_sample.jsonl",
                alive,
                cancellable=keep,
            ),
        }
    events.emit(run_id, "evaluated", "evaluate", data={"metrics": metrics, **uris, **(tag or {})})


def report_run(spec: contract.RunSpec, payload: dict[str, Any], *, attempt: int = 1) -> None:
    cfg = stagekit.config()
    run_id = spec["run_id"]
    store = artifacts_from_config(cfg)
    rescore: contract.Rescore | None = payload.get("rescore")
    tag = {"evaluation": rescore["evaluation"]} if rescore else None
    if not rescore and hostctl.is_cancelled(cfg, run_id):
        raise stagekit.Cancelled
    events.emit(run_id, "started", "report", data=tag)
    name = f"run-{run_id}-report" + (f"-rescore{rescore['evaluation']}" if rescore else "")
    with (
        stagekit.fence(cfg, name),
        stagekit.job_dir(cfg, f"run{run_id}-report") as job,
        ExitStack() as held,
    ):
        inp = job / "input"
        inp.mkdir()
        store.get_file(payload["metrics_uri"], inp / "metrics.json")
        store.get_file(payload["per_sample_uri"], inp / "per_sample.jsonl")
        store.get_file(payload["predictions_uri"], inp / "predictions.jsonl")
        (inp / "run.json").write_text(json.dumps(payload.get("run_facts", {})), encoding="utf-8")
        for p in inp.iterdir():
            p.chmod(0o644)
        # The report shows the images of its gallery only: those are the objects it needs.
        gallery = Selection.of_ids(gallery_candidates(inp / "metrics.json", inp / "per_sample.jsonl"))
        dataset_dir = held.enter_context(
            dataset_lease(
                spec["dataset"], cfg, on_progress=stagekit.sync_progress(run_id, None), select=gallery
            )
        )
        inputs = [containers.BindMount(dataset_dir, "/data"), containers.BindMount(inp, "/job/input")]
        stagekit.run_system_stage(
            spec, cfg, store, job, stage="report", attempt=attempt, inputs=inputs, cancellable=not rescore
        )
        html = job / "output" / "report.html"
        if not html.is_file():
            raise HostError("The report container exited 0 but wrote no report.html.")
        alive = stagekit.stage_alive(run_id, "report")
        uri = stagekit.put(store, cfg, spec, html, "report.html", alive, cancellable=not rescore)
    events.emit(run_id, "reported", "report", data={"report_uri": uri, **(tag or {})})


def compare_runs(payload: contract.CompareTask) -> str:
    cfg = stagekit.config()
    cid = payload["comparison_id"]
    store = artifacts_from_config(cfg)
    with (
        dataset_lease(payload["dataset"], cfg) as dataset_dir,
        stagekit.fence(cfg, f"comparison-{cid}"),
        stagekit.job_dir(cfg, f"cmp{cid}") as job,
    ):
        runs_dir = job / "input" / "runs"
        for k, run in enumerate(payload["runs"]):
            d = runs_dir / str(k)
            d.mkdir(parents=True)
            store.get_file(run["metrics_uri"], d / "metrics.json")
            store.get_file(run["per_sample_uri"], d / "per_sample.jsonl")
            store.get_file(run["predictions_uri"], d / "predictions.jsonl")
            (d / "run.json").write_text(
                json.dumps({"run_id": run["run_id"], **run["facts"]}), encoding="utf-8"
            )
        for p in (job / "input").rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (job / "input").chmod(0o755)
        img, lim = payload["report_image"], payload["limits"]
        result = containers.run(
            containers.ContainerSpec(
                image=img["image"],
                digest=img["digest"],
                user=cfg.container_user,
                tmpfs_mb=cfg.tmpfs_mb,
                host=cfg.hostname,
                labels={"org.hyperbench.comparison": str(cid), "org.hyperbench.stage": "compare"},
                mounts=[
                    containers.BindMount(dataset_dir, "/data"),
                    containers.BindMount(job / "input", "/job/input"),
                    containers.BindMount(job / "output", "/job/output", read_only=False),
                ],
                timeout_s=lim["timeout_s"],
                memory_mb=lim["memory_mb"],
                cpus=lim["cpus"],
                pids=lim["pids"],
            )
        )
        log = job / "container.log"
        log.write_text(result.log_tail, encoding="utf-8")
        store.put_file(log, uri_join(payload["artifacts_uri"], "compare.log"))
        if result.exit_code != 0 or result.timed_out:
            raise HostError(
                containers.describe_failure(
                    f"Report container {img['image']} (comparison)",
                    result,
                    lim["timeout_s"],
                    lim["memory_mb"],
                )
            )
        html = job / "output" / "report.html"
        if not html.is_file():
            raise HostError("The report container exited 0 but wrote no comparison report.html.")
        return store.put_file(html, uri_join(payload["artifacts_uri"], "report.html"))
