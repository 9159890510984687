"""Experiments (model x dataset x prompt/params) and their runs."""

from __future__ import annotations

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
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

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

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.state})"

    @property
    def progress(self) -> float:
        return self.progress_done / self.progress_total if self.progress_total else 0.0

    @property
    def samples_per_s(self) -> float | None:
        return round(self.progress_total / self.inference_s, 3) if self.inference_s else None


class RunShard(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="shards")
    index = models.PositiveSmallIntegerField()
    attempt = models.PositiveSmallIntegerField(default=1)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    host = models.CharField(max_length=200, blank=True)
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(default=0)
    predictions_uri = models.CharField(max_length=1000, blank=True)
    errors = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="run_shard_unique")]

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
        ordering = ["created_at", "id"]

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

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"comparison {self.pk} of runs {', '.join(map(str, self.run_ids))}"
