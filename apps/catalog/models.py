"""Datasets and model images: what users may choose from, registered once."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models


class Dataset(models.Model):
    class Task(models.TextChoices):
        OCR = "ocr", "OCR"
        VQA = "vqa", "VQA"

    name = models.CharField(max_length=200)
    version = models.CharField(max_length=100)
    task = models.CharField(max_length=8, choices=Task.choices)
    description = models.TextField(blank=True)
    license = models.CharField(max_length=100, blank=True)
    source_uri = models.CharField(max_length=1000, help_text="file:///dir/ or s3://bucket/prefix/")
    manifest_sha256 = models.CharField(max_length=64)
    sample_count = models.PositiveIntegerField()
    total_bytes = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "version"]
        constraints = [
            models.UniqueConstraint(fields=["name", "version"], name="dataset_name_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


class ModelImage(models.Model):
    """A model packaged as an image that follows the container contract.

    Only staff register these; users pick one by name. The digest is the local
    image id the host worker must find before it runs anything.
    """

    name = models.SlugField(max_length=100, unique=True)
    image = models.CharField(max_length=300, help_text="Image reference, e.g. hyperbench/ocr-rapidocr:0.1.0")
    digest = models.CharField(
        max_length=80, blank=True, help_text="sha256:... image id; the worker refuses a different local image"
    )
    requires_gpu = models.BooleanField(default=False)
    gpus = models.PositiveSmallIntegerField(default=0)
    network = models.BooleanField(default=False, help_text="Egress for API models only")
    default_params = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True)
    # API models (vlm-openai): where the container sends requests. Staff set these;
    # the key itself never enters the DB, only the name of a variable on the host worker.
    endpoint_base_url = models.URLField(blank=True, help_text="OpenAI-compatible base URL (ends in /v1)")
    endpoint_model = models.CharField(max_length=200, blank=True)
    endpoint_api_key_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[RegexValidator(r"^[A-Z_][A-Z0-9_]*$")],
        help_text="Name of the environment variable holding the API key on the host workers",
    )
    endpoint_max_concurrency = models.PositiveSmallIntegerField(default=4)
    endpoint_timeout_s = models.PositiveIntegerField(default=60)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
