"""REST serializers. Input serializers reject unknown fields: a typo or an
attempt to pass an image string, a mount or a flag is an error, not ignored."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from apps.catalog.models import Dataset, ModelImage
from apps.hosts.models import Host
from apps.runs.models import Comparison, Experiment, Run, RunEvent, RunShard
from worker import contract


class StrictMixin(serializers.Serializer):
    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({k: ["Unknown field."] for k in unknown})
        return super().to_internal_value(data)


class DatasetSerializer(serializers.ModelSerializer):
    class Meta:
        model = Dataset
        fields = [
            "id",
            "name",
            "version",
            "task",
            "description",
            "license",
            "source_uri",
            "manifest_sha256",
            "sample_count",
            "total_bytes",
            "created_at",
        ]
        read_only_fields = fields


class DatasetRegisterSerializer(StrictMixin):
    uri = serializers.CharField(
        max_length=1000,
        help_text="file:///dir/ under a configured dataset root, "
        "or s3://bucket/prefix/ in an allow-listed bucket",
    )


class ModelImageSerializer(StrictMixin, serializers.ModelSerializer):
    # Declared without the unique validator: registering an existing name updates it.
    name = serializers.SlugField(max_length=100)
    # Required here although the column may be blank: a model is pinned by construction.
    digest = serializers.RegexField(
        contract.IMAGE_ID_PATTERN,
        max_length=80,
        help_text="The image id the hosts must find: sha256:<64 hex> (docker image inspect -f '{{.Id}}')",
        error_messages={"invalid": "Give the image id: sha256: and 64 lowercase hex digits."},
    )

    class Meta:
        model = ModelImage
        fields = [
            "id",
            "name",
            "image",
            "digest",
            "requires_gpu",
            "gpus",
            "network",
            "default_params",
            "description",
            "endpoint_base_url",
            "endpoint_model",
            "endpoint_api_key_env",
            "endpoint_max_concurrency",
            "endpoint_timeout_s",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]


class ParamsField(serializers.JSONField):
    """Model params: a small JSON object, handed to the container as params.json only."""

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("params must be a JSON object.")
        if len(json.dumps(value)) > 16_000:
            raise serializers.ValidationError("params must be under 16 kB of JSON.")
        return value


class ExperimentSerializer(StrictMixin, serializers.ModelSerializer):
    model = serializers.SlugRelatedField(slug_field="name", queryset=ModelImage.objects.all())
    dataset = serializers.PrimaryKeyRelatedField(queryset=Dataset.objects.all())
    params = ParamsField(required=False, default=dict)
    owner = serializers.CharField(source="owner.username", read_only=True)

    class Meta:
        model = Experiment
        fields = ["id", "name", "model", "dataset", "prompt", "params", "owner", "created_at"]
        read_only_fields = ["id", "owner", "created_at"]


class RunStartSerializer(StrictMixin):
    experiment = serializers.PrimaryKeyRelatedField(queryset=Experiment.objects.all())
    shards = serializers.IntegerField(min_value=1, max_value=64, default=1)


class RunShardSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunShard
        fields = ["index", "attempt", "state", "host", "done", "total", "errors", "predictions_uri"]


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ["kind", "stage", "host", "shard", "message", "data", "created_at"]


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


class RunSerializer(serializers.ModelSerializer):
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
    model = serializers.CharField(source="experiment.model.name", read_only=True)
    dataset = serializers.CharField(source="experiment.dataset.__str__", read_only=True)

    class Meta:
        model = Run
        fields = [
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
            "image_digest",
            "manifest_sha256",
            "predictions_uri",
            "metrics_uri",
            "per_sample_uri",
            "report_uri",
            "report_url",
            "artifacts_url",
            "shards",
            "sync",
            "events",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_report_url(self, run: Run) -> str | None:
        if not run.report_uri:
            return None
        request = self.context.get("request")
        path = f"/api/v1/runs/{run.pk}/report/"
        return request.build_absolute_uri(path) if request else path

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
        fields = [f for f in RunSerializer.Meta.fields if f not in ("sync", "events")]
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
        fields = [
            "name",
            "worker",
            "last_seen",
            "silent",
            "nvml",
            "gpus",
            "cache",
            "cache_bytes",
            "cache_budget_bytes",
            "running",
        ]
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
    runs = serializers.ListField(child=serializers.IntegerField(min_value=1), min_length=2, max_length=8)


class ComparisonSerializer(serializers.ModelSerializer):
    report_url = serializers.SerializerMethodField()

    class Meta:
        model = Comparison
        fields = [
            "id",
            "run_ids",
            "dataset",
            "state",
            "error_reason",
            "report_uri",
            "report_url",
            "created_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_report_url(self, cmp: Comparison) -> str | None:
        if not cmp.report_uri:
            return None
        request = self.context.get("request")
        path = f"/api/v1/comparisons/{cmp.pk}/report/"
        return request.build_absolute_uri(path) if request else path
