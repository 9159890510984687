"""Datasets and model images: what users may choose from, registered once."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils import timezone


class Dataset(models.Model):
    class Task(models.TextChoices):
        OCR = "ocr", "OCR"
        VQA = "vqa", "VQA"
        TABLE = "table", "Table recognition"
        KIE = "kie", "Key information extraction"
        PAGE = "page", "Page parsing"

    name = models.CharField(max_length=200)
    version = models.CharField(max_length=100)
    task = models.CharField(max_length=8, choices=Task.choices)
    description = models.TextField(blank=True)
    license = models.CharField(max_length=100, blank=True)
    source_uri = models.CharField(
        max_length=1000,
        help_text="The primary source: file:///dir/ or s3://bucket/prefix/ (the local one when it has both)",
    )
    s3_uri = models.CharField(
        max_length=1000,
        blank=True,
        default="",
        help_text="A second source in S3 (same manifest, checked) when source_uri is a local directory: "
        "hosts without that directory sync the version from here",
    )
    manifest_sha256 = models.CharField(max_length=64)
    sample_count = models.PositiveIntegerField()
    total_bytes = models.PositiveBigIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name", "version"]
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["name", "version"], name="dataset_name_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def sources(self) -> list[str]:
        """Every source of this version, the primary first."""
        return [u for u in (self.source_uri, self.s3_uri) if u]


class UploadClaim(models.Model):
    """An upload of ``name@version`` being written to S3 (apps/catalog/uploads.py): one at a time,
    so that one upload's clean-up after a failure cannot delete the objects another one wrote
    under the same prefix. Removed when the upload ends; one left by a web process that died is
    taken over after ``uploads.CLAIM_STALE``."""

    name = models.CharField(max_length=200)
    version = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar[list[models.BaseConstraint]] = [
            models.UniqueConstraint(fields=["name", "version"], name="upload_claim_name_version_unique")
        ]

    def __str__(self) -> str:
        return f"upload of {self.name}@{self.version}"


# Every field a staff member sets on a model, in the model's order: the admin's form and the API's
# serializer take this one list, so a new column is editable in both or in neither.
MODEL_IMAGE_FIELDS = (
    "name",
    "image",
    "digest",
    "requires_gpu",
    "gpus",
    "network",
    "cacheable",
    "default_params",
    "description",
    "endpoint_base_url",
    "endpoint_model",
    "endpoint_api_key_env",
    "endpoint_max_concurrency",
    "endpoint_timeout_s",
)


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
    cacheable = models.BooleanField(
        default=True,
        help_text="Its predictions may be reused by other runs (the prediction cache); off for a model "
        "whose answers must be fetched anew each run. Resume and retry work either way.",
    )
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
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name
