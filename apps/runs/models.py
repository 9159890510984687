"""Experiments (model x dataset x prompt/params) and their runs."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

from apps.catalog.models import Dataset, ModelImage


class Experiment(models.Model):
    name = models.CharField(max_length=200)
    model = models.ForeignKey(ModelImage, on_delete=models.PROTECT, related_name="experiments")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="experiments")
    prompt = models.TextField(blank=True)
    params = models.JSONField(default=dict, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="experiments")
    public = models.BooleanField(
        default=False,
        db_index=True,
        help_text="Everyone signed in sees it, its runs and their leaderboard entries; only its owner "
        "(and staff) start or cancel its runs",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.model} on {self.dataset})"


class Run(models.Model):
    class State(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        EVALUATING = "evaluating"
        REPORTING = "reporting"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    TERMINAL = (State.SUCCEEDED, State.FAILED, State.CANCELLED)

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    spec = models.JSONField(help_text="The frozen run spec sent to the host workers")
    shard_count = models.PositiveSmallIntegerField(default=1)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    error_reason = models.TextField(blank=True)
    metrics = models.JSONField(null=True, blank=True)
    image_digest = models.CharField(max_length=80, blank=True, help_text="Digest of the image that ran")
    metric_version = models.CharField(max_length=32, blank=True, db_index=True)
    inference_s = models.FloatField(default=0.0, help_text="Sum of the shards' container wall times")
    gpu_seconds = models.FloatField(default=0.0, help_text="Sum over shards of wall time x GPUs held")
    manifest_sha256 = models.CharField(max_length=64)
    predictions_uri = models.CharField(max_length=1000, blank=True)
    metrics_uri = models.CharField(max_length=1000, blank=True)
    per_sample_uri = models.CharField(max_length=1000, blank=True)
    report_uri = models.CharField(max_length=1000, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When evaluate or report was last sent, and how many times (the reconciler re-sends a lost one).
    stage_sent_at = models.DateTimeField(null=True, blank=True)
    stage_attempt = models.PositiveSmallIntegerField(default=1)
    retry_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="retries",
        help_text="The failed or cancelled run this one retries (same frozen spec)",
    )

    ACTIVE = (State.QUEUED, State.RUNNING, State.EVALUATING, State.REPORTING)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.state})"

    @property
    def progress(self) -> float:
        return self.progress_done / self.progress_total if self.progress_total else 0.0

    @property
    def reuse(self) -> bool:
        """Whether the run takes other runs' predictions (its frozen spec; True before the cache)."""
        return bool((self.spec or {}).get("cache", {}).get("reuse", True))

    def cache_counts(self) -> dict[str, int]:
        """``{"hits", "misses", "resumed"}`` over its finished shards: hits came from other runs,
        misses were inferred by this run (resumed: of those, by an earlier attempt)."""
        shards = [s for s in self.shards.all() if s.state == RunShard.State.SUCCEEDED]
        hits = sum(s.cache_hits for s in shards)
        return {
            "hits": hits,
            "misses": sum(s.done for s in shards) - hits,
            "resumed": sum(s.resumed for s in shards),
        }

    @property
    def samples_per_s(self) -> float | None:
        return round(self.progress_total / self.inference_s, 3) if self.inference_s else None


class RunShard(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    OPEN = (State.PENDING, State.RUNNING)  # the states a host event may still move a shard from

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveSmallIntegerField()
    attempt = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    host = models.CharField(max_length=200, blank=True)
    instance = models.CharField(
        max_length=64, blank=True, help_text="The host worker start (instance id) running this attempt"
    )
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    predictions_uri = models.CharField(max_length=1000, blank=True)
    errors = models.PositiveIntegerField(default=0)
    cache_hits = models.PositiveIntegerField(
        default=0, help_text="Predictions the accepted attempt took from other runs (the prediction cache)"
    )
    resumed = models.PositiveIntegerField(
        default=0, help_text="Predictions the accepted attempt took from this run's earlier attempts"
    )
    progress_seq = models.BigIntegerField(
        default=0, help_text="The seq of the last progress tick applied (ticks only move forward)"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["run", "index"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["run", "index"], name="run_shard_unique")
        ]

    def __str__(self) -> str:
        return f"run {self.run_id} shard {self.index}"


class RunEvent(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32)
    stage = models.CharField(max_length=16)
    host = models.CharField(max_length=200, blank=True)
    shard = models.PositiveSmallIntegerField(null=True, blank=True)
    message = models.TextField(blank=True)
    data = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.kind}/{self.stage} run {self.run_id}"


class Comparison(models.Model):
    """A comparison report of two or more runs on the same dataset version."""

    class State(models.TextChoices):
        QUEUED = "queued"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    run_ids = models.JSONField(help_text="The compared runs, in the order the report shows them")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="comparisons")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    report_uri = models.CharField(max_length=1000, blank=True)
    error_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When its task was last sent, and how many times (the reconciler re-sends a lost one).
    sent_at = models.DateTimeField(null=True, blank=True)
    attempt = models.PositiveSmallIntegerField(default=1)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at"]

    def __str__(self) -> str:
        return f"comparison {self.pk} of runs {', '.join(map(str, self.run_ids))}"


class Evaluation(models.Model):
    """A re-score of a succeeded run: evaluate and report again on its stored predictions.

    The run's own first evaluation stays on the run (``Run.metrics`` and its URIs); each
    rescore is a row here, so every scoring of a run stays visible. States (each move a
    conditional update from the states that allow it; see docs/architecture.md):
    ``queued -> evaluating -> reporting -> succeeded``, or ``failed`` from any of the first three.
    """

    class State(models.TextChoices):
        QUEUED = "queued"
        EVALUATING = "evaluating"
        REPORTING = "reporting"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    ACTIVE = (State.QUEUED, State.EVALUATING, State.REPORTING)

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="evaluations")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED, db_index=True)
    metric_version = models.CharField(max_length=32, blank=True, db_index=True)
    eval_image = models.CharField(max_length=300)
    eval_image_digest = models.CharField(max_length=80)
    report_image = models.CharField(max_length=300, blank=True)
    report_image_digest = models.CharField(max_length=80, blank=True)
    metrics = models.JSONField(null=True, blank=True)
    metrics_uri = models.CharField(max_length=1000, blank=True)
    per_sample_uri = models.CharField(max_length=1000, blank=True)
    report_uri = models.CharField(max_length=1000, blank=True)
    error_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"evaluation {self.pk} of run {self.run_id} ({self.state})"
