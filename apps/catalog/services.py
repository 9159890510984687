"""Writes for datasets and model images (HackSoft style: keyword-only services)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from apps.catalog.models import Dataset, ModelImage
from worker.manifest import ManifestError, validate_local


class RegistrationError(Exception):
    """A dataset or model cannot be registered; ``problems`` says why, line by line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def _local_root_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise RegistrationError(
            f"Unsupported dataset URI {uri!r}: "
            "use file:///absolute/dir/ under one of the configured dataset roots."
        )
    path = Path(unquote(parsed.path))
    if not path.is_absolute():
        raise RegistrationError(f"Dataset URI {uri!r} must name an absolute path.")
    root = path.resolve()
    allowed = settings.HYPERBENCH_DATASET_ROOTS
    if not any(root == r or root.is_relative_to(r) for r in allowed):
        raise RegistrationError(
            f"Dataset path {root} is outside the configured dataset roots "
            f"({', '.join(str(r) for r in allowed)}); ask an operator to add it to HYPERBENCH_DATASET_ROOTS."
        )
    if not root.is_dir():
        raise RegistrationError(f"Dataset directory {root} does not exist.")
    return root


def dataset_register(*, uri: str, created_by: AbstractBaseUser | None = None) -> Dataset:
    """Validate a dataset version (streaming its manifest) and record it.

    Nothing is recorded unless the whole manifest is valid. Re-registering the
    same name/version with the same manifest returns the existing row; a
    different manifest under an existing name/version is refused (versions are
    immutable).
    """
    root = _local_root_from_uri(uri)
    try:
        summary = validate_local(root)
    except ManifestError as e:
        raise RegistrationError(f"The dataset at {uri} is not valid.", e.problems) from e
    existing = Dataset.objects.filter(name=summary["name"], version=summary["version"]).first()
    if existing is not None:
        if existing.manifest_sha256 == summary["manifest_sha256"]:
            return existing
        raise RegistrationError(
            f"Dataset {summary['name']}@{summary['version']} is already registered "
            "with a different manifest; "
            "dataset versions are immutable, register it under a new version."
        )
    info = summary
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                name=info["name"],
                version=info["version"],
                task=info["task"],
                description=str(info.get("description", "")),
                license=str(info.get("license", "")),
                source_uri=root.as_uri() + "/",
                manifest_sha256=info["manifest_sha256"],
                sample_count=info["sample_count"],
                total_bytes=info["total_bytes"],
                created_by=created_by if created_by is not None and created_by.is_authenticated else None,
            )
    except IntegrityError as e:  # a concurrent registration of the same version won
        raise RegistrationError(
            f"Dataset {info['name']}@{info['version']} was registered concurrently."
        ) from e


def model_image_register(
    *,
    name: str,
    image: str,
    digest: str = "",
    requires_gpu: bool = False,
    gpus: int = 0,
    network: bool = False,
    default_params: dict[str, object] | None = None,
    description: str = "",
    endpoint_base_url: str = "",
    endpoint_model: str = "",
    endpoint_api_key_env: str = "",
    endpoint_max_concurrency: int = 4,
    endpoint_timeout_s: int = 60,
) -> ModelImage:
    """Register (or update) a model image. Staff only: callers check permissions."""
    if requires_gpu and gpus < 1:
        gpus = 1
    model, _ = ModelImage.objects.update_or_create(
        name=name,
        defaults={
            "image": image,
            "digest": digest,
            "requires_gpu": requires_gpu,
            "gpus": gpus,
            "network": network,
            "default_params": default_params or {},
            "description": description,
            "endpoint_base_url": endpoint_base_url,
            "endpoint_model": endpoint_model,
            "endpoint_api_key_env": endpoint_api_key_env,
            "endpoint_max_concurrency": endpoint_max_concurrency,
            "endpoint_timeout_s": endpoint_timeout_s,
        },
    )
    return model
