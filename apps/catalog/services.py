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

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction

from apps.catalog.models import Dataset, ModelImage
from apps.catalog.validators import model_problems, printable
from worker.contract import is_image_id
from worker.manifest import DATASET_JSON, ManifestError, ManifestSummary, read_dataset_json, validate_local
from worker.s3 import S3ClientSettings, endpoint_for, s3_client
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


#: Bounds of a file:// dataset path (bytes of UTF-8): a path segment, the whole path.
MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 1024


def relative_to_roots(text: str) -> str:
    """``text`` with every configured dataset root shown as a relative path: no absolute server path."""
    for r in sorted(settings.HYPERBENCH_DATASET_ROOTS, key=lambda p: len(str(p)), reverse=True):
        uri = r.as_uri()
        text = text.replace(uri + "/", "").replace(uri, ".")
        text = text.replace(str(r) + "/", "").replace(str(r), ".")
    return text


def _shown(path: Path) -> str:
    """A path under a dataset root, as the user may see it: relative to its root."""
    for r in settings.HYPERBENCH_DATASET_ROOTS:
        if path == r:
            return "."
        if path.is_relative_to(r):
            return str(path.relative_to(r))
    return "(outside the dataset roots)"


def _local_root_from_uri(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise RegistrationError(
            "Unsupported dataset URI: use file:///absolute/dir/ under one of the configured dataset roots."
        )
    if parsed.query or parsed.fragment:
        raise RegistrationError("A file:// dataset URI cannot carry a query or a fragment.")
    raw = unquote(parsed.path)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise RegistrationError("The dataset path must not contain NUL or other control characters.")
    try:
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise RegistrationError("The dataset path is not valid UTF-8.") from None
    if len(encoded) > MAX_PATH_BYTES or any(len(seg) > MAX_SEGMENT_BYTES for seg in encoded.split(b"/")):
        raise RegistrationError(
            f"The dataset path is too long: at most {MAX_SEGMENT_BYTES} bytes a segment "
            f"and {MAX_PATH_BYTES} in all."
        )
    path = Path(raw)
    if not path.is_absolute():
        raise RegistrationError("A file:// dataset URI must name an absolute path.")
    try:
        root = path.resolve()
        allowed = settings.HYPERBENCH_DATASET_ROOTS
        if not any(root == r or root.is_relative_to(r) for r in allowed):
            raise RegistrationError(
                "The dataset path is outside the configured dataset roots; "
                "ask an operator to add its directory to HYPERBENCH_DATASET_ROOTS."
            )
        if not root.is_dir():
            raise RegistrationError(
                f"Dataset directory {_shown(root)} does not exist (under the dataset root)."
            )
    except (OSError, ValueError) as e:
        raise RegistrationError(f"The dataset path cannot be read: {e.__class__.__name__}.") from e
    return root


def _check_local(uri: str) -> _Checked:
    root = _local_root_from_uri(uri)
    try:
        summary = validate_local(root)
        info = read_dataset_json(root)
    except ManifestError as e:
        raise RegistrationError(
            f"The dataset at {_shown(root)} (under the dataset root) is not valid.",
            [relative_to_roots(p) for p in e.problems],
        ) from e
    return _Checked(root.as_uri() + "/", summary, info["description"], info["license"])


def _s3_endpoint() -> str:
    return endpoint_for(settings.HYPERBENCH_S3_ENDPOINT_URL, settings.HYPERBENCH_S3_REGION)


def s3_location(uri: str) -> tuple[str, str]:
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


def web_s3_client(*, max_attempts: int = 4) -> Any:
    """The shared factory's client with the web side's settings: the configured endpoint and keys
    (no credential chain). Dataset registration and uploads, and the artifact store's links."""
    return s3_client(
        S3ClientSettings(
            endpoint_url=settings.HYPERBENCH_S3_ENDPOINT_URL or None,
            region=settings.HYPERBENCH_S3_REGION,
            access_key_id=settings.HYPERBENCH_S3_ACCESS_KEY_ID,
            secret_access_key=settings.HYPERBENCH_S3_SECRET_ACCESS_KEY,
            session_token=settings.HYPERBENCH_S3_SESSION_TOKEN or None,
            max_attempts=max_attempts,
            connect_timeout_s=settings.HYPERBENCH_S3_TIMEOUT_S,
            read_timeout_s=settings.HYPERBENCH_S3_TIMEOUT_S,
        )
    )


def _check_s3(uri: str) -> _Checked:
    bucket, prefix = s3_location(uri)
    source = f"s3://{bucket}/{prefix}"
    client = web_s3_client()
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
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri) or "%00" in uri:
        raise RegistrationError("A dataset URI must not contain NUL or other control characters.")
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


class RegistrationConflict(RegistrationError):
    """The name and version exist and the new source cannot join them (HTTP 409)."""


@dataclass(frozen=True)
class Registration:
    """What :func:`dataset_register` did: ``outcome`` is ``created``, ``added_source`` or ``already``."""

    dataset: Dataset
    outcome: str
    message: str

    @property
    def created(self) -> bool:
        return self.outcome == "created"


def _shown_uri(uri: str) -> str:
    """A source as users may read it: an S3 URI as is, a local one relative to its dataset root."""
    if not uri.startswith("file:"):
        return uri
    path = Path(unquote(urlparse(uri).path))
    shown = _shown(path)
    if shown.startswith("("):
        return "a local directory outside today's dataset roots"
    return f"the local directory {shown.rstrip('/')}/ (under a dataset root)"


def _sources_shown(dataset: Dataset) -> str:
    return " and ".join(_shown_uri(u) for u in dataset.sources)


def _join(existing: Dataset, checked: _Checked) -> Registration | None:
    """Record ``checked`` as a source of the ``existing`` version, or say why it cannot be.

    Returns None when the row changed under us (a concurrent registration): the caller reads it again.
    """
    info = checked.summary
    label = f"{existing.name}@{existing.version}"
    new = checked.source_uri
    if existing.manifest_sha256 != info["manifest_sha256"] or existing.sample_count != info["sample_count"]:
        raise RegistrationConflict(
            f"{label} is already registered from {_sources_shown(existing)} with manifest "
            f"{existing.manifest_sha256} ({existing.sample_count} samples); {_shown_uri(new)} has manifest "
            f"{info['manifest_sha256']} ({info['sample_count']} samples). Dataset versions are immutable: "
            "register this content under a new version."
        )
    if new in existing.sources:
        return Registration(
            existing, "already", f"{label} is already registered from {_shown_uri(new)}; nothing changed."
        )
    new_is_s3 = new.startswith("s3://")
    old_is_s3 = existing.source_uri.startswith("s3://")
    if existing.s3_uri or new_is_s3 == old_is_s3:
        kind = "an S3" if new_is_s3 else "a local"
        raise RegistrationConflict(
            f"{label} already has {kind} source ({_sources_shown(existing)}); a version has at most one "
            f"local and one S3 source, so {_shown_uri(new)} was not added."
        )
    # One local and one S3 source: the local one is the primary (source_uri), the S3 one is s3_uri.
    old = existing.source_uri
    local, s3 = (old, new) if new_is_s3 else (new, old)
    changed = Dataset.objects.filter(pk=existing.pk, source_uri=existing.source_uri, s3_uri="").update(
        source_uri=local, s3_uri=s3
    )
    if not changed:
        return None
    existing.refresh_from_db()
    return Registration(
        existing,
        "added_source",
        f"{label} already existed from {_shown_uri(old)} with the same "
        f"manifest ({existing.manifest_sha256}); added {_shown_uri(new)} as its second source. Hosts that "
        "have the local directory read it there; the others sync the version from S3.",
    )


def dataset_register(*, uri: str, created_by: User | AnonymousUser | None = None) -> Registration:
    """Validate a dataset version (streaming its manifest) and record it, or add it as a second source.

    ``file://`` versions are read from disk; ``s3://`` versions are streamed from
    the configured endpoint, and every object the manifest names is checked to
    exist with its declared size (against a listing of the prefix). Nothing is
    recorded unless the whole manifest is valid; the error's ``problems`` name
    the manifest lines.

    When the name and version exist already: the same source again is ``already``
    (nothing changes); a source of the other kind (local vs S3) with the same
    manifest hash and sample count becomes the version's second source
    (``added_source``); anything else is a :class:`RegistrationConflict` naming
    both sources and both hashes (versions are immutable). Messages show local
    paths relative to their dataset root, never as absolute server paths.
    """
    by = created_by if created_by is not None and created_by.is_authenticated else None
    try:
        checked = _check(uri)  # slow I/O (disk, S3): outside any transaction
        info = checked.summary
        for _ in range(3):  # a concurrent registration of the same version may win a race; read again
            existing = Dataset.objects.filter(name=info["name"], version=info["version"]).first()
            if existing is not None:
                joined = _join(existing, checked)
                if joined is not None:
                    return joined
                continue
            try:
                with transaction.atomic():
                    dataset = Dataset.objects.create(
                        name=info["name"],
                        version=info["version"],
                        task=info["task"],
                        description=checked.description,
                        license=checked.license[:100],
                        source_uri=checked.source_uri,
                        manifest_sha256=info["manifest_sha256"],
                        sample_count=info["sample_count"],
                        total_bytes=info["total_bytes"],
                        created_by=by,
                    )
            except IntegrityError:
                continue
            return Registration(
                dataset,
                "created",
                f"Registered {dataset} from {_shown_uri(dataset.source_uri)}: "
                f"{dataset.sample_count} samples, manifest {dataset.manifest_sha256}.",
            )
        raise RegistrationError(
            f"Dataset {info['name']}@{info['version']} was being registered concurrently; try again."
        )
    except RegistrationError as e:  # no absolute server path in what users read
        raise type(e)(relative_to_roots(str(e)), [relative_to_roots(p) for p in e.problems]) from e


def model_image_register(
    *,
    name: str,
    image: str,
    digest: str,
    requires_gpu: bool = False,
    gpus: int = 0,
    network: bool = False,
    cacheable: bool = True,
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
        RegistrationError: the digest is missing or not a full ``sha256:`` image id, or a
            field is out of its bounds (``apps.catalog.validators.model_problems``:
            endpoint URL, API-key variable, gpus, concurrency, timeout, default_params).
    """
    problems = model_problems(
        {
            "name": name,
            "image": image,
            "gpus": gpus,
            "default_params": default_params,
            "description": description,
            "endpoint_base_url": endpoint_base_url,
            "endpoint_model": endpoint_model,
            "endpoint_api_key_env": endpoint_api_key_env,
            "endpoint_max_concurrency": endpoint_max_concurrency,
            "endpoint_timeout_s": endpoint_timeout_s,
        }
    )
    if problems:
        raise RegistrationError(
            f"Model {printable(name)!r} cannot be registered.",
            [f"{field}: {why}" for field, why in problems.items()],
        )
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
            "cacheable": cacheable,
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
