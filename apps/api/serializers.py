"""REST serializers. Input serializers reject unknown fields: a typo or an
attempt to pass an image string, a mount or a flag is an error, not ignored."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar

from django.conf import settings
from django.http import QueryDict
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.authtoken.serializers import AuthTokenSerializer

from apps.catalog.importers import FORMATS as UPLOAD_FORMATS
from apps.catalog.models import MODEL_IMAGE_FIELDS, Dataset, ModelImage
from apps.catalog.validators import (
    MODEL_BOUNDS,
    json_problem,
    model_problems,
    params_problem,
    printable,
    text_problem,
)
from apps.hosts.models import Host
from apps.runs.models import Comparison, Evaluation, Experiment, Run, RunEvent, RunShard
from worker import contract


def _items(data: Any) -> list[tuple[Any, Any]]:
    """(key, value) pairs of a request body: every value of a form field, the value of a JSON key."""
    if isinstance(data, QueryDict):
        return [(k, v) for k, values in data.lists() for v in values]
    return list(data.items())


#: The largest id the API accepts anywhere (the databases' bigint).
MAX_ID = 2**63 - 1
#: The longest free text (an experiment's prompt, a model's description).
MAX_TEXT = 32_000
MAX_DATASET_URI = 1000


class StrictMixin(serializers.Serializer):
    """Input serializers: unknown fields are refused, and so is any value that could not be stored
    and read back (lone surrogates, NUL, NaN, 64-bit overflow, deep nesting): a 400 naming the field,
    checked before any field looks at the value (so no error message echoes it either)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            errors: dict[str, list[str]] = {}
            for key, value in _items(data):
                if not isinstance(key, str) or text_problem(key):
                    errors[printable(str(key))] = [
                        "Field names " + (text_problem(str(key)) or "must be text.")
                    ]
                    continue
                problem = json_problem(value)
                if problem:
                    errors.setdefault(key, []).append(problem)
            if errors:
                raise serializers.ValidationError(errors)
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({k: ["Unknown field."] for k in unknown})
        return super().to_internal_value(data)


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields: tuple[str, ...] = (
            "id",
            "name",
            "version",
            "task",
            "description",
            "license",
            "source_uri",
            "s3_uri",
            "manifest_sha256",
            "sample_count",
            "total_bytes",
            "created_at",
        )
        read_only_fields = fields


class DatasetRegisteredSerializer(DatasetSerializer):
    """The registered row, with what registration did (``created``, ``added_source``, ``already``)."""

    outcome = serializers.ChoiceField(choices=["created", "added_source", "already"], read_only=True)
    message = serializers.CharField(read_only=True)

    class Meta(DatasetSerializer.Meta):
        fields = (*DatasetSerializer.Meta.fields, "outcome", "message")
        read_only_fields = fields


class DatasetRegisterSerializer(StrictMixin):
    uri = serializers.CharField(
        max_length=MAX_DATASET_URI,
        help_text="file:///dir/ under a configured dataset root, "
        "or s3://bucket/prefix/ in an allow-listed bucket",
    )


class DatasetUploadSerializer(StrictMixin):
    """``POST /api/v1/datasets/upload/``: a multipart form (the file in ``file``)."""

    file = serializers.FileField(
        help_text="An archive (.zip, .tar, .tar.gz, .tgz) of the dataset, or one file of an import "
        "format (.tsv, .parquet, .json, .jsonl, .pdf)"
    )
    format = serializers.ChoiceField(
        choices=list(UPLOAD_FORMATS),
        default="layout",
        help_text="The importer: layout (the project's own dataset.json + manifest.jsonl + images), "
        "vlmevalkit-tsv, hf-parquet, docvqa-json, pubtabnet-jsonl, kie-json, images-txt, pdf",
    )
    name = serializers.CharField(
        max_length=100, required=False, default="", help_text="Required unless format is layout"
    )
    version = serializers.CharField(
        max_length=100, required=False, default="", help_text="Required unless format is layout"
    )
    task = serializers.ChoiceField(
        choices=Dataset.Task.choices, required=False, help_text="Required unless format is layout"
    )
    columns = serializers.CharField(
        max_length=4000,
        required=False,
        default="",
        help_text='A JSON object mapping the format\'s names to the file\'s columns, e.g. {"answer": "gt"}',
    )
    description = serializers.CharField(max_length=MAX_TEXT, required=False, default="")
    license = serializers.CharField(max_length=100, required=False, default="")


class ParamsField(serializers.JSONField):
    """Params (an experiment's, a model's defaults): a small JSON object that round-trips."""

    def to_internal_value(self, data: Any) -> Any:
        try:
            value = super().to_internal_value(data)
        except RecursionError as e:  # a form field holding JSON nested thousands deep
            raise serializers.ValidationError("JSON is nested too deep.") from e
        problem = params_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        return value


class ModelImageSerializer(StrictMixin, serializers.ModelSerializer):
    # Declared without the unique validator: registering an existing name updates it.
    name = serializers.SlugField(max_length=100)
    default_params = ParamsField(required=False, default=dict, help_text="A JSON object (at most 16 kB)")
    gpus = serializers.IntegerField(
        min_value=MODEL_BOUNDS["gpus"][0], max_value=MODEL_BOUNDS["gpus"][1], required=False
    )
    endpoint_max_concurrency = serializers.IntegerField(
        min_value=MODEL_BOUNDS["endpoint_max_concurrency"][0],
        max_value=MODEL_BOUNDS["endpoint_max_concurrency"][1],
        required=False,
    )
    endpoint_timeout_s = serializers.IntegerField(
        min_value=MODEL_BOUNDS["endpoint_timeout_s"][0],
        max_value=MODEL_BOUNDS["endpoint_timeout_s"][1],
        required=False,
    )
    description = serializers.CharField(max_length=MAX_TEXT, required=False, allow_blank=True)
    # Required here although the column may be blank: a model is pinned by construction.
    digest = serializers.RegexField(
        contract.IMAGE_ID_PATTERN,
        max_length=80,
        help_text="The image id the hosts must find: sha256:<64 hex> (docker image inspect -f '{{.Id}}')",
        error_messages={"invalid": "Give the image id: sha256: and 64 lowercase hex digits."},
    )

    class Meta:
        model = ModelImage
        fields = ("id", *MODEL_IMAGE_FIELDS, "created_at")
        read_only_fields = ("id", "created_at")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The registration service's own checks (endpoint URL, API-key variable...), keyed by field.
        problems = model_problems(attrs)
        if problems:
            raise serializers.ValidationError({k: [v] for k, v in problems.items()})
        return attrs


class ExperimentSerializer(StrictMixin, serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=ModelImage.objects.all())
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    params = ParamsField(required=False, default=dict)
    owner = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = Experiment
        fields = ("id", "name", "model", "dataset", "prompt", "params", "public", "owner", "created_at")
        read_only_fields = ("id", "owner", "created_at")
        extra_kwargs: ClassVar[dict[str, dict[str, Any]]] = {"prompt": {"max_length": MAX_TEXT}}


class RunStartSerializer(StrictMixin):
    experiment = serializers.PrimaryKeyRelatedField(queryset=Experiment.objects.all())
    shards = serializers.IntegerField(min_value=1, max_value=64, default=1)
    reuse = serializers.BooleanField(
        default=True,
        help_text="Take predictions other runs left in the prediction cache (false: infer every sample, "
        "for a timing benchmark)",
    )


class ArtifactUriField(serializers.CharField):
    """Where an artifact is in the store, never a path on a server: a ``file://`` URI is shown
    relative to the store's root (``runs/5/predictions.jsonl``; the run's ``artifacts/`` links
    download it), an ``s3://`` one as it is."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(read_only=True, **kwargs)

    def to_representation(self, value: Any) -> str:
        uri = str(value or "")
        if not uri.startswith("file://"):
            return uri
        root = settings.HYPERBENCH_ARTIFACTS_URI.rstrip("/") + "/"
        if uri.startswith(root):
            return uri[len(root) :]
        # A run from an earlier store root: its place under it, without the server's directories.
        _, sep, rest = uri.rpartition("/runs/")
        return f"runs/{rest}" if sep else uri.rsplit("/", 1)[-1]


class RunShardSerializer(serializers.ModelSerializer):
    predictions_uri = ArtifactUriField()

    class Meta:
        model = RunShard
        fields = (
            "index",
            "attempt",
            "state",
            "host",
            "done",
            "total",
            "errors",
            "cache_hits",
            "resumed",
            "predictions_uri",
        )


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ("kind", "stage", "host", "shard", "message", "data", "created_at")


#: How many of a run's latest events the run API shows.
RECENT_EVENTS = 20
_SYNC_FIELDS = (
    "phase",
    "files_done",
    "files_total",
    "bytes_done",
    "bytes_total",
    "fetched_files",
    "fetched_bytes",
    "rate_bps",
)


class CacheCountsSerializer(serializers.Serializer):
    hits = serializers.IntegerField()
    misses = serializers.IntegerField()
    resumed = serializers.IntegerField()


class EvaluationSerializer(serializers.ModelSerializer):
    """A rescore of a run: its stored predictions scored again by the eval image named here."""

    metrics_uri = ArtifactUriField()
    per_sample_uri = ArtifactUriField()
    report_uri = ArtifactUriField()

    class Meta:
        model = Evaluation
        fields: tuple[str, ...] = (
            "id",
            "run",
            "state",
            "metric_version",
            "eval_image",
            "eval_image_digest",
            "report_image",
            "report_image_digest",
            "metrics",
            "metrics_uri",
            "per_sample_uri",
            "report_uri",
            "error_reason",
            "created_at",
            "finished_at",
        )
        read_only_fields = fields


class RunSerializer(serializers.ModelSerializer):
    predictions_uri = ArtifactUriField()
    metrics_uri = ArtifactUriField()
    per_sample_uri = ArtifactUriField()
    report_uri = ArtifactUriField()
    progress = serializers.FloatField(read_only=True)
    shards = RunShardSerializer(many=True, read_only=True)
    report_url = serializers.SerializerMethodField()
    artifacts_url = serializers.SerializerMethodField(
        help_text="Where the download links of the run's artifacts are (outputs, report, logs)"
    )
    sync = serializers.SerializerMethodField(
        help_text="Dataset sync into each host's node cache: the latest tick per shard (null: eval/report)"
    )
    events = serializers.SerializerMethodField(help_text=f"The run's {RECENT_EVENTS} latest events")
    evaluations = EvaluationSerializer(
        many=True,
        read_only=True,
        help_text="Its rescores, newest first (POST .../rescore/); its first evaluation is the run's own "
        "metrics, metric_version and URIs",
    )
    model = serializers.CharField(source="experiment.model.name", read_only=True)
    dataset = serializers.CharField(source="experiment.dataset.__str__", read_only=True)
    reuse = serializers.BooleanField(read_only=True, help_text="Whether it takes other runs' predictions")
    cache = serializers.SerializerMethodField(
        help_text="Prediction cache over its finished shards: hits (taken from other runs), misses "
        "(inferred by this run), resumed (of the misses, those kept from an earlier attempt of a shard)"
    )

    class Meta:
        model = Run
        fields: tuple[str, ...] = (
            "id",
            "experiment",
            "model",
            "dataset",
            "state",
            "progress",
            "progress_done",
            "progress_total",
            "error_reason",
            "metrics",
            "metric_version",
            "image_digest",
            "manifest_sha256",
            "predictions_uri",
            "metrics_uri",
            "per_sample_uri",
            "report_uri",
            "report_url",
            "artifacts_url",
            "shards",
            "reuse",
            "cache",
            "retry_of",
            "evaluations",
            "sync",
            "events",
            "created_at",
            "started_at",
            "finished_at",
        )
        read_only_fields = fields

    def get_report_url(self, run: Run) -> str | None:
        if not run.report_uri:
            return None
        request = self.context.get("request")
        path = f"/api/v1/runs/{run.pk}/report/"
        return request.build_absolute_uri(path) if request else path

    @extend_schema_field(CacheCountsSerializer)
    def get_cache(self, run: Run) -> dict[str, int]:
        return run.cache_counts()

    def get_artifacts_url(self, run: Run) -> str:
        request = self.context.get("request")
        path = f"/api/v1/runs/{run.pk}/artifacts/"
        return request.build_absolute_uri(path) if request else path

    def get_sync(self, run: Run) -> list[dict[str, Any]]:
        # One row per (shard, host): event_record keeps each sync's latest tick in place.
        rows = run.events.filter(kind="progress", stage="sync").order_by("shard", "host")
        out = []
        for ev in rows:
            data = ev.data or {}
            out.append(
                {
                    "shard": ev.shard,
                    "host": ev.host,
                    **{k: data.get(k) for k in _SYNC_FIELDS},
                    "message": ev.message,
                    "started_at": serializers.DateTimeField().to_representation(ev.created_at),
                }
            )
        return out

    @extend_schema_field(RunEventSerializer(many=True))
    def get_events(self, run: Run) -> Any:
        latest = run.events.order_by("-created_at", "-id")[:RECENT_EVENTS]
        return RunEventSerializer(reversed(list(latest)), many=True).data


class RunListSerializer(RunSerializer):
    """A run in a list: everything but its events, which cost two queries a run; see the run itself."""

    class Meta(RunSerializer.Meta):
        fields = tuple(f for f in RunSerializer.Meta.fields if f not in ("sync", "events", "evaluations"))
        read_only_fields = fields


class RunArtifactsSerializer(serializers.Serializer):
    """``GET /api/v1/runs/<id>/artifacts/``: name -> download URL (for the schema; the view answers dicts)."""

    run = serializers.IntegerField()
    expires_in = serializers.IntegerField(
        allow_null=True, help_text="Seconds the presigned (s3://) links stay valid; null: no s3:// link"
    )
    artifacts = serializers.DictField(
        child=serializers.URLField(),
        help_text="predictions, metrics, per_sample, report, shards/<k>/predictions, logs/<stage>/...log",
    )


class HostSerializer(serializers.ModelSerializer):
    silent = serializers.BooleanField(read_only=True)
    cache = serializers.SerializerMethodField(
        help_text="Cached dataset versions: name, version, manifest_sha256, bytes, in_use, "
        "last_used (unix time) and last_used_at (ISO 8601)"
    )

    class Meta:
        model = Host
        fields = (
            "name",
            "worker",
            "instance",
            "queue",
            "slots",
            "active",
            "last_seen",
            "silent",
            "nvml",
            "gpus",
            "cache",
            "cache_bytes",
            "cache_budget_bytes",
            "running",
        )
        read_only_fields = fields

    def get_cache(self, host: Host) -> list[dict[str, Any]]:
        out = []
        for entry in host.cache or []:
            ts = entry.get("last_used") if isinstance(entry, dict) else None
            when = (
                datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")
                if isinstance(ts, int | float) and not isinstance(ts, bool)
                else None
            )
            out.append({**entry, "last_used_at": when} if isinstance(entry, dict) else entry)
        return out


class ComparisonStartSerializer(StrictMixin):
    runs = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=MAX_ID), min_length=2, max_length=8
    )


class ComparisonSerializer(serializers.ModelSerializer):
    report_uri = ArtifactUriField()
    report_url = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = (
            "id",
            "run_ids",
            "dataset",
            "state",
            "error_reason",
            "report_uri",
            "report_url",
            "created_at",
            "finished_at",
        )
        read_only_fields = fields

    def get_report_url(self, cmp: Comparison) -> str | None:
        if not cmp.report_uri:
            return None
        request = self.context.get("request")
        path = f"/api/v1/comparisons/{cmp.pk}/report/"
        return request.build_absolute_uri(path) if request else path


class TokenRequestSerializer(StrictMixin, AuthTokenSerializer):
    """``POST /api/v1/auth/token/``: username and password, nothing else."""
