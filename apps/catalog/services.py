"""Writes for datasets and model images (HackSoft style: keyword-only services).

Dataset URIs are user input: a ``file://`` URI must resolve under one of
``HYPERBENCH_DATASET_ROOTS``, an ``s3://bucket/prefix/`` URI must name one of
``HYPERBENCH_S3_BUCKETS`` and is always read through the server's own endpoint and
keys. Nothing in the URI can choose a host, a port or credentials.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from apps.catalog.models import Dataset, ModelImage
from worker.contract import is_image_id
from worker.manifest import DATASET_JSON, ManifestError, ManifestSummary, read_dataset_json, validate_local
from worker.s3manifest import split_s3_uri, validate_s3


class RegistrationError(Exception):
    """A dataset or model cannot be registered; ``problems`` says why, line by line."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


@dataclass(frozen=True)
class _Checked:
    """A dataset version that passed validation, ready to be recorded."""

    source_uri: str
    summary: ManifestSummary
    description: str
    license: str


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


def _check_local(uri: str) -> _Checked:
    root = _local_root_from_uri(uri)
    try:
        summary = validate_local(root)
        info = read_dataset_json(root)
    except ManifestError as e:
        raise RegistrationError(f"The dataset at {uri} is not valid.", e.problems) from e
    return _Checked(root.as_uri() + "/", summary, info["description"], info["license"])


def _s3_endpoint() -> str:
    # Always explicit: left to botocore, the endpoint could come from AWS_ENDPOINT_URL or a config file.
    return settings.HYPERBENCH_S3_ENDPOINT_URL or f"https://s3.{settings.HYPERBENCH_S3_REGION}.amazonaws.com"


def _s3_location(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of an ``s3://`` URI the server may read, or a RegistrationError saying why not."""
    parsed = urlparse(uri)
    netloc = parsed.netloc
    if not netloc:
        raise RegistrationError(f"Dataset URI {uri!r} names no bucket: use s3://bucket/prefix/.")
    if "@" in netloc or ":" in netloc or parsed.query or parsed.fragment:
        raise RegistrationError(
            f"Dataset URI {uri!r} is not a plain s3://bucket/prefix/ URI: it cannot carry a host, port, "
            "credentials, query or fragment. The S3 endpoint and keys are server settings."
        )
    allowed = list(settings.HYPERBENCH_S3_BUCKETS)
    if not allowed:
        raise RegistrationError(
            "S3 datasets are not enabled on this server: no bucket is allow-listed "
            "(an operator sets HYPERBENCH_S3_BUCKETS)."
        )
    if netloc not in allowed:
        raise RegistrationError(
            f"Bucket {netloc!r} is not one of the buckets this server may read ({', '.join(allowed)}); "
            "ask an operator to add it to HYPERBENCH_S3_BUCKETS."
        )
    if not settings.HYPERBENCH_S3_ACCESS_KEY_ID or not settings.HYPERBENCH_S3_SECRET_ACCESS_KEY:
        raise RegistrationError(
            "S3 datasets need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the web server's environment."
        )
    try:
        return split_s3_uri(uri, allowed)
    except ManifestError as e:
        raise RegistrationError(f"Dataset URI {uri!r} is not valid: {'; '.join(e.problems)}.") from e


def _s3_client() -> Any:
    """A boto3 client on the configured endpoint with the configured keys (no credential chain)."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=_s3_endpoint(),
        region_name=settings.HYPERBENCH_S3_REGION,
        aws_access_key_id=settings.HYPERBENCH_S3_ACCESS_KEY_ID,
        aws_secret_access_key=settings.HYPERBENCH_S3_SECRET_ACCESS_KEY,
        aws_session_token=settings.HYPERBENCH_S3_SESSION_TOKEN or None,
        config=Config(
            s3={"addressing_style": "path"},  # as the host's node cache signs its GETs
            connect_timeout=settings.HYPERBENCH_S3_TIMEOUT_S,
            read_timeout=settings.HYPERBENCH_S3_TIMEOUT_S,
            retries={"mode": "standard", "max_attempts": 3},
        ),
    )


def _check_s3(uri: str) -> _Checked:
    bucket, prefix = _s3_location(uri)
    source = f"s3://{bucket}/{prefix}"
    client = _s3_client()
    try:
        summary = validate_s3(source, client, buckets=settings.HYPERBENCH_S3_BUCKETS)
        # validate_s3 checked dataset.json; read it again for the free-text fields it does not return.
        raw = client.get_object(Bucket=bucket, Key=prefix + DATASET_JSON)["Body"].read(1024 * 1024)
    except ManifestError as e:
        raise RegistrationError(f"The dataset at {source} is not valid.", e.problems) from e
    except (BotoCoreError, ClientError) as e:
        raise RegistrationError(f"S3 at {_s3_endpoint()} could not be read for {source}: {e}") from e
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if not isinstance(info, dict) or (info.get("name"), info.get("version")) != (
        summary["name"],
        summary["version"],
    ):
        raise RegistrationError(f"{source}{DATASET_JSON} changed while it was being registered; try again.")
    return _Checked(source, summary, str(info.get("description") or ""), str(info.get("license") or ""))


def _check(uri: str) -> _Checked:
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return _check_local(uri)
    if scheme == "s3":
        return _check_s3(uri)
    if scheme in ("http", "https"):
        raise RegistrationError(
            f"Dataset URI {uri!r} names an endpoint. Register S3 datasets as s3://bucket/prefix/: they are "
            "read from the server's own S3 endpoint (HYPERBENCH_S3_ENDPOINT_URL), never from one in a URI."
        )
    raise RegistrationError(
        f"Unsupported dataset URI {uri!r}: use file:///absolute/dir/ under a configured dataset root, "
        "or s3://bucket/prefix/ in an allow-listed bucket."
    )


def dataset_register(*, uri: str, created_by: AbstractBaseUser | None = None) -> Dataset:
    """Validate a dataset version (streaming its manifest) and record it.

    ``file://`` versions are read from disk; ``s3://`` versions are streamed from
    the configured endpoint, and every object the manifest names is checked to
    exist with its declared size (against a listing of the prefix). Nothing is
    recorded unless the whole manifest is valid; the error's ``problems`` name
    the manifest lines. Re-registering the same name/version with the same
    manifest returns the existing row; a different manifest under an existing
    name/version is refused (versions are immutable).
    """
    checked = _check(uri)  # slow I/O (disk, S3): outside any transaction
    info = checked.summary
    existing = Dataset.objects.filter(name=info["name"], version=info["version"]).first()
    if existing is not None:
        if existing.manifest_sha256 == info["manifest_sha256"]:
            return existing
        raise RegistrationError(
            f"Dataset {info['name']}@{info['version']} is already registered "
            "with a different manifest; "
            "dataset versions are immutable, register it under a new version."
        )
    try:
        with transaction.atomic():
            return Dataset.objects.create(
                name=info["name"],
                version=info["version"],
                task=info["task"],
                description=checked.description,
                license=checked.license[:100],
                source_uri=checked.source_uri,
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
    digest: str,
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
    """Register (or update) a model image, pinned to its image id. Staff only: callers check permissions.

    ``digest`` is required: the web side cannot ask a Docker engine, so staff
    give the image id the host workers must find (``docker image inspect
    --format '{{.Id}}' IMAGE``, or ``python -m worker.validate_image IMAGE`` on a
    host). A model without one could run whatever its tag points to later.

    Raises:
        RegistrationError: the digest is missing or not a full ``sha256:`` image id.
    """
    digest = digest.strip()
    if not is_image_id(digest):
        raise RegistrationError(
            f"Model {name!r} needs the image id it is pinned to: digest must be sha256: and 64 hex "
            f"digits (docker image inspect --format '{{{{.Id}}}}' {image}), not {digest!r}."
        )
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
