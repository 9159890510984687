"""The contract between the web side and the host worker.

This is the one module of ``worker`` that the Django side imports: task names,
queue names, and the JSON payloads that travel in Celery messages. It imports
nothing but the standard library, so both sides can depend on it without
dragging each other's dependencies along.

Payloads are plain JSON (``TypedDict``), never model objects: a GPU host has no
Django and no DB, and a message must stay readable by an older or newer peer.
"""

from __future__ import annotations

import re
from typing import Literal, NotRequired, TypedDict

SPEC_VERSION = 1
# The container contract (/job/input.jsonl, /job/params.json, /job/output/; images/sdk's
# CONTRACT_VERSION): a change of it may change what a model predicts, so it is in every
# prediction cache key (worker/predcache.py).
CONTRACT_VERSION = 1

# An image is pinned by its local image id (what `docker image inspect --format
# '{{.Id}}'` prints): no registry is needed to know it, and it names the exact
# content a tag pointed to when staff registered it.
IMAGE_ID_PATTERN = r"^sha256:[0-9a-f]{64}$"
_IMAGE_ID = re.compile(IMAGE_ID_PATTERN)


def is_image_id(value: object) -> bool:
    """Whether ``value`` is a full local image id, ``sha256:`` and 64 lowercase hex digits."""
    return isinstance(value, str) and _IMAGE_ID.fullmatch(value) is not None


class Queue:
    CONTROL = "control"  # control worker, next to Django: applies host events and heartbeats to the DB
    GPU = "gpu"  # host workers with GPUs: inference of GPU models
    CPU = "cpu"  # host workers: CPU inference, evaluation, report


HOST_QUEUE_PREFIX = "host."
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def host_queue(hostname: str) -> str:
    """The queue only the host worker(s) of ``hostname`` consume: work that must run on that host."""
    if not _HOST_NAME.fullmatch(hostname):
        raise ValueError(f"not a host name: {hostname!r}")
    return HOST_QUEUE_PREFIX + hostname


# Celery task ids are deterministic, so the control side can revoke the message of a
# shard attempt (a cancel, a superseded attempt) without storing what Celery returned.
def shard_task_id(run_id: int, shard: int, attempt: int) -> str:
    return f"hb-run{int(run_id)}-shard{int(shard)}-a{int(attempt)}"


def comparison_task_id(comparison_id: int, attempt: int = 1) -> str:
    return f"hb-cmp{int(comparison_id)}-a{int(attempt)}"


def stage_task_id(run_id: int, stage: str, attempt: int = 1) -> str:
    """Task id of a run's evaluate or report message (``attempt``: the reconciler's re-sends)."""
    if not stage.isalpha():
        raise ValueError(f"not a stage name: {stage!r}")
    return f"hb-run{int(run_id)}-{stage}-a{int(attempt)}"


def rescore_task_id(run_id: int, evaluation_id: int, stage: str) -> str:
    """Task id of a rescore's evaluate or report message (one evaluation, one of each)."""
    if not stage.isalpha():
        raise ValueError(f"not a stage name: {stage!r}")
    return f"hb-run{int(run_id)}-rescore{int(evaluation_id)}-{stage}"


class Rescore(TypedDict):
    """What makes an evaluate/report message a rescore of a succeeded run (``payload["rescore"]``).

    ``evaluation``: the control side's ``Evaluation`` row, named in every event the stage
    sends (``data["evaluation"]``), so the run's own state machine never sees them;
    ``predictions_uri``: the run's stored, merged predictions (evaluate only).
    """

    evaluation: int
    predictions_uri: NotRequired[str]


# Remote-control command of the host workers (handled by each worker's main process, not its
# pool, so it is served while every pool slot runs a container): stop a run's containers.
CONTROL_STOP_RUN = "hb_stop_run"


# Metric names by task (the first is the primary one) and their direction: the one
# definition the web side ranks by. The eval image cannot import this module (it
# depends on nothing of ours) and keeps its own copy in images/eval/hb_metrics.py and
# hb_stats.py; tests/test_metrics.py checks that the two agree.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "ocr": ("cer", "wer", "ned", "cer_mean", "wer_mean"),
    "vqa": ("anls", "exact_match", "vqa_accuracy", "relaxed_accuracy", "ocrbench"),
    "table": ("teds", "teds_struct"),
    "kie": ("field_f1", "nted_accuracy"),
    "page": ("page_ned", "table_teds", "table_teds_struct", "tables_found"),
}
LOWER_IS_BETTER = frozenset({"cer", "wer", "ned", "cer_mean", "wer_mean", "page_ned"})


# Host tasks (queues gpu/cpu), consumed by worker.tasks.
TASK_INFER_SHARD = "hyperbench.host.infer_shard"
TASK_EVALUATE = "hyperbench.host.evaluate"
TASK_REPORT = "hyperbench.host.report"
TASK_COMPARE = "hyperbench.host.compare"

# Control tasks (queue control), consumed by apps.runs.tasks.
TASK_RECORD_EVENT = "hyperbench.control.record_event"  # one event (hosts before batches)
TASK_RECORD_EVENTS = "hyperbench.control.record_events"  # a batch: list[Event], applied in order
TASK_DRAIN_EVENTS = "hyperbench.control.drain_events"
# The hosts' event batches: plain messages (a JSON list of Event) on this list, drained by the
# control side many at a time (apps/runs/drain.py), not one Celery task per message.
EVENTS_QUEUE = "hb.events"
TASK_HOST_HEARTBEAT = "hyperbench.control.host_heartbeat"
TASK_RECORD_COMPARISON = "hyperbench.control.record_comparison"


class DatasetRef(TypedDict):
    name: str
    version: str
    task: Literal["ocr", "vqa", "table", "kie", "page"]
    uri: str  # file:///abs/dir/ or s3://bucket/prefix/
    manifest_sha256: str
    sample_count: int
    # The same version in S3 when ``uri`` is a local directory (same manifest, checked at registration):
    # a host without that directory syncs from here. Empty or absent when there is no second source.
    s3_uri: NotRequired[str]


class Endpoint(TypedDict):
    """An API model's endpoint, from the registered model (never from run input)."""

    base_url: str
    model: str
    api_key_env: str  # name of a variable on the host worker; the key never travels in messages
    max_concurrency: int
    timeout_s: int


class ModelRef(TypedDict):
    name: str
    image: str  # registered image reference, e.g. hyperbench/ocr-rapidocr:latest
    digest: str  # the image id (sha256:...) recorded at registration; checked before each run, never ""
    requires_gpu: bool
    gpus: int
    network: bool  # only API models get egress; everything else runs with network "none"
    endpoint: NotRequired[Endpoint]


class SystemImageRef(TypedDict):
    """The eval or report image: pinned by the web side's settings, checked by the host like a model."""

    image: str
    digest: str  # image id (sha256:...), never ""


class Limits(TypedDict):
    timeout_s: int  # wall-clock deadline of one container
    memory_mb: int
    cpus: float
    pids: int


class CacheRef(TypedDict):
    """The prediction cache of a run (worker/predcache.py), frozen in its spec by the web side."""

    uri: str  # where entries live: <HYPERBENCH_PREDICTION_CACHE_URI>, file:// or s3://, ending in "/"
    reuse: bool  # take other runs' predictions (False: POST /runs/ {"reuse": false}, for timing benchmarks)
    cacheable: bool  # the model's registration; False: entries are private to this run and its retries
    scope: int  # the run a chain of retries began with: a non-cacheable model's entries are keyed by it
    lineage: list[int]  # this run and the runs it retries: their predictions are reused even without reuse


class RunSpec(TypedDict):
    """Frozen at run start; everything a host worker needs, nothing it may choose."""

    spec_version: int
    run_id: int
    dataset: DatasetRef
    model: ModelRef
    params: dict[str, object]  # the model's default params merged with the experiment's
    prompt: str
    shards: int
    artifacts_uri: str  # file:///abs/dir/runs/<id>/ or s3://bucket/prefix/runs/<id>/
    eval_image: SystemImageRef
    report_image: SystemImageRef
    limits: Limits
    summary: dict[str, object]  # model/dataset/experiment facts shown in the report
    cache: NotRequired[CacheRef]  # absent (a spec from before the cache): no lookups, no entries


class CompareRun(TypedDict):
    run_id: int
    metrics_uri: str
    per_sample_uri: str
    predictions_uri: str
    facts: dict[str, object]  # shown in the report: model, digest, params, timings


class CompareTask(TypedDict):
    """A comparison report of two or more runs on the same dataset version."""

    comparison_id: int
    dataset: DatasetRef
    runs: list[CompareRun]
    report_image: SystemImageRef
    limits: Limits
    artifacts_uri: str  # .../comparisons/<id>/


class ComparisonResult(TypedDict):
    comparison_id: int
    ok: bool
    host: str
    report_uri: NotRequired[str]
    reason: NotRequired[str]


class ShardTask(TypedDict):
    spec: RunSpec
    shard: int
    attempt: int
    gpu_wait_since: NotRequired[float]  # set by the host worker while the shard waits for a GPU
    transient_tries: NotRequired[int]  # transient-error retries so far (GPU waits have their own budget)


EventKind = Literal[
    "started",  # a stage began on a host
    "progress",  # samples done / total for a shard
    "shard_succeeded",
    "evaluated",
    "reported",
    "failed",  # a stage failed; reason says what to do about it
    "cancelled",  # a host stopped a stage because its run was cancelled
    "log",
]


class Event(TypedDict):
    run_id: int
    kind: EventKind
    stage: Literal["sync", "infer", "evaluate", "report"]
    host: str
    instance: NotRequired[str]  # the host worker's instance id (new at every worker start)
    shard: NotRequired[int]
    attempt: NotRequired[int]
    done: NotRequired[int]
    total: NotRequired[int]
    message: NotRequired[str]
    reason: NotRequired[str]
    # shard_succeeded: artifact URI of the attempt's published predictions + counts
    # evaluated: metrics.json content + artifact URIs
    # reported: report URI
    data: NotRequired[dict[str, object]]
    ts: float
    # Strictly increasing per sending process; a shard's progress is applied only forward.
    seq: NotRequired[int]


class CachedDataset(TypedDict):
    name: str
    version: str
    manifest_sha256: str
    bytes: int
    last_used: float  # unix time
    in_use: bool


class RunningContainer(TypedDict):
    run: int
    shard: int | None
    stage: str
    gpus: list[str]
    started: str


class HostReport(TypedDict):
    """Sent by every host worker every ``heartbeat_s`` seconds."""

    host: str
    worker: str  # the Celery node name
    instance: NotRequired[str]  # new at every worker start: a new one means the old one's work is gone
    queue: NotRequired[str]  # the host's own queue (host.<hostname>)
    dataset_roots: NotRequired[list[str]]  # the file:// roots this host can mount (HYPERBENCH_DATASET_ROOTS)
    slots: NotRequired[int]  # tasks this worker runs at once (its pool size)
    active: NotRequired[int]  # tasks it runs now
    tasks: NotRequired[list[str]]  # ids of the tasks it holds (running or reserved)
    ts: float
    gpus: list[dict[str, object]]  # worker.gpus.GpuInfo; [] where NVML is absent
    nvml: bool
    cache: list[CachedDataset]
    cache_bytes: int
    cache_budget_bytes: int
    running: list[RunningContainer]


# --- Artifact layout, under a run's ``artifacts_uri`` (shared by both sides) -------------------
#
# runs/<run>/shards/<k>/attempt-<a>/predictions.jsonl           published: complete and validated
# runs/<run>/shards/<k>/attempt-<a>/rejected/predictions.jsonl  what a failed attempt wrote (kept, never read)
# runs/<run>/logs/infer/shard-<k>/attempt-<a>.log               container logs, per stage/shard/attempt
# runs/<run>/logs/{evaluate,report}/attempt-<a>.log
# runs/<run>/{predictions.jsonl,metrics.json,per_sample.jsonl,report.html}
# <spec["cache"]["uri"]><key[:2]>/<key>.json                    the prediction cache (worker/predcache.py)
#
# Keys carry the attempt so that a retried shard never overwrites or mixes with an
# earlier attempt; the control side records the URI of the attempt it accepted.

RUN_ARTIFACTS = {
    "predictions": "predictions.jsonl",
    "metrics": "metrics.json",
    "per_sample": "per_sample.jsonl",
    "report": "report.html",
}
LOGS_PREFIX = "logs/"


def shard_predictions_key(shard: int, attempt: int) -> str:
    """Key (relative to the run's ``artifacts_uri``) of a shard attempt's published predictions."""
    return f"shards/{int(shard)}/attempt-{int(attempt)}/predictions.jsonl"


def shard_rejected_key(shard: int, attempt: int) -> str:
    """Key of what a failed shard attempt wrote: kept for a person to look at, never evaluated."""
    return f"shards/{int(shard)}/attempt-{int(attempt)}/rejected/predictions.jsonl"


def log_key(stage: str, attempt: int, shard: int | None = None) -> str:
    """Key of a container log: ``logs/<stage>[/shard-<k>]/attempt-<a>.log``."""
    if not stage.isalpha():
        raise ValueError(f"not a stage name: {stage!r}")
    where = f"{stage}/shard-{int(shard)}" if shard is not None else stage
    return f"{LOGS_PREFIX}{where}/attempt-{int(attempt)}.log"


def shard_of(index: int, shards: int) -> int:
    """Sample ``index`` (0-based line number in the manifest) goes to this shard."""
    return index % shards
