"""Datasets uploaded through the API: unpacked safely, converted, stored, registered.

``dataset_upload`` takes the uploaded file (already streamed to a temporary file by Django),
unpacks it when it is an archive (apps/catalog/archives.py: links, traversal, bombs, counts and
sizes refused), converts it with the named importer (apps/catalog/importers/) or checks it as the
project's own layout, moves the result to ``<HYPERBENCH_UPLOADS_ROOT>/<name>/<version>/`` (the
uploads root lies under one of the dataset roots) and registers it like any ``file://``
version. Every step works in a staging folder under the uploads root; on any refusal the
staging folder and the version's folder are removed, so nothing is left on disk.

With ``HYPERBENCH_UPLOADS_URI=s3://bucket/prefix/`` (an allow-listed bucket), the version is
converted the same way in ``<HYPERBENCH_UPLOADS_ROOT>/.staging/`` and then written to
``s3://bucket/prefix/<name>/<version>/`` (apps/catalog/s3uploads.py, manifest last) and
registered as that ``s3://`` URI, as ``POST /api/v1/datasets/`` would register it; on any
failure the objects it wrote are removed and nothing is registered. One upload of a name@version
writes at a time (``UploadClaim``, a row unique per name and version): a second one at the same
moment is a 409 before it writes anything.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import IntegrityError, transaction
from django.db.models import Q, Sum
from django.utils import timezone

from apps.catalog import s3uploads
from apps.catalog.archives import ArchiveRefused, OverQuota, UnpackLimits, is_archive, unpack
from apps.catalog.importers import LAYOUT, ImportFailure, Options, run_import
from apps.catalog.models import Dataset, UploadClaim
from apps.catalog.services import (
    Registration,
    RegistrationConflict,
    RegistrationError,
    dataset_register,
    relative_to_roots,
)
from worker.manifest import _SAFE_NAME, DATASET_JSON, TASKS, ManifestError, read_dataset_json

STAGING = ".staging"


class UploadRefused(RegistrationError):
    """The upload is refused (HTTP 400); ``problems`` names the rows or members."""


class UploadOverQuota(UploadRefused):
    """The upload would go over the user's storage quota (HTTP 403)."""


class UploadsUnavailable(Exception):
    """Uploads are not configured on this server (HTTP 503)."""


@dataclass(frozen=True)
class UploadRequest:
    fmt: str
    filename: str
    name: str = ""
    version: str = ""
    task: str = ""
    columns: dict[str, str] | None = None
    description: str = ""
    license: str = ""


def uploads_uri() -> str:
    """``HYPERBENCH_UPLOADS_URI``, or (empty, the default) the file:// URI of HYPERBENCH_UPLOADS_ROOT."""
    configured = str(settings.HYPERBENCH_UPLOADS_URI or "").strip()
    if configured:
        return configured
    return Path(settings.HYPERBENCH_UPLOADS_ROOT).resolve().as_uri() + "/"


def _local_dir(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.netloc not in ("", "localhost") or parsed.query or parsed.fragment:
        raise UploadsUnavailable("Uploads are off: HYPERBENCH_UPLOADS_URI is not a plain file:///dir/ URI.")
    return Path(unquote(parsed.path)).resolve()


def s3_target() -> tuple[str, str] | None:
    """(bucket, prefix) when uploads are stored in S3, None when on disk.

    Raises:
        UploadsUnavailable: HYPERBENCH_UPLOADS_URI is neither file:// nor an allow-listed s3:// prefix.
    """
    uri = uploads_uri()
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return None
    if scheme != "s3":
        raise UploadsUnavailable("Uploads are off: HYPERBENCH_UPLOADS_URI is neither file:// nor s3://.")
    try:
        return s3uploads.s3_target(uri)
    except RegistrationError as e:
        raise UploadsUnavailable(f"Uploads are off: HYPERBENCH_UPLOADS_URI {uri}: {e}") from e


def uploads_root() -> Path:
    """The local uploads root, created: where uploads are staged (and stored, unless in S3).

    Stored on disk, it must lie under one of the dataset roots; staged for S3, anywhere.
    """
    in_s3 = s3_target() is not None
    uri = uploads_uri()
    root = Path(settings.HYPERBENCH_UPLOADS_ROOT).resolve() if in_s3 else _local_dir(uri)
    if not in_s3 and not any(root == r or root.is_relative_to(r) for r in settings.HYPERBENCH_DATASET_ROOTS):
        raise UploadsUnavailable(
            "Uploads are off: HYPERBENCH_UPLOADS_ROOT (or a file:// HYPERBENCH_UPLOADS_URI) is not under "
            "one of HYPERBENCH_DATASET_ROOTS (an operator sets it, docs/operations.md)."
        )
    (root / STAGING).mkdir(parents=True, exist_ok=True)
    return root


def uploaded_bytes(user: User | AnonymousUser) -> int:
    """Bytes of the dataset versions ``user`` uploaded (those stored under an uploads root or prefix)."""
    if user.pk is None:
        return 0
    local = Path(settings.HYPERBENCH_UPLOADS_ROOT).resolve().as_uri() + "/"
    query = Q(source_uri__startswith=local)
    configured = uploads_uri()
    if configured.startswith("s3://"):
        query |= Q(source_uri__startswith=configured.rstrip("/") + "/")
    elif configured != local:
        query |= Q(source_uri__startswith=_local_dir(configured).as_uri() + "/")
    found = Dataset.objects.filter(query, created_by_id=user.pk).aggregate(total=Sum("total_bytes"))
    return int(found["total"] or 0)


def _check_request(req: UploadRequest) -> None:
    problems = []
    for key in ("name", "version"):
        value = getattr(req, key)
        if value and not _SAFE_NAME.match(value):
            problems.append(
                f"{key} {value!r} must be 1-100 letters, digits, '.', '_' or '-', from a letter or digit"
            )
        if not value and req.fmt != LAYOUT:
            problems.append(f"{key} is required for format {req.fmt}")
    if req.task and req.task not in TASKS:
        problems.append(f"task must be one of {', '.join(TASKS)}")
    if not req.task and req.fmt != LAYOUT:
        problems.append(f"task is required for format {req.fmt}")
    if problems:
        raise UploadRefused("The upload is refused.", problems)


def _layout_root(src: Path) -> Path:
    """The folder of an unpacked layout upload that holds dataset.json: the top, or its one folder."""
    if (src / DATASET_JSON).is_file():
        return src
    entries = [p for p in src.iterdir() if not p.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / DATASET_JSON).is_file():
        return entries[0]
    raise UploadRefused(
        f"A layout upload holds {DATASET_JSON} and manifest.jsonl at its top (or in its one folder); "
        f"no {DATASET_JSON} found."
    )


def _layout(src: Path, req: UploadRequest) -> Path:
    root = _layout_root(src)
    try:
        info = read_dataset_json(root)
    except ManifestError as e:
        raise UploadRefused("The upload's dataset.json is not valid.", e.problems) from e
    for key in ("name", "version", "task"):
        given = getattr(req, key)
        if given and given != info[key]:
            raise UploadRefused(f"{key} {given!r} differs from dataset.json's {info[key]!r}.")
    return root


#: The suffixes of single-file uploads the importers look for.
_SINGLE_SUFFIXES = (".tsv", ".parquet", ".jsonl", ".json", ".pdf")


def _suffix(filename: str) -> str:
    lower = filename.lower()
    return next((x for x in _SINGLE_SUFFIXES if lower.endswith(x)), ".bin")


def _convert(
    upload: Path, staging: Path, req: UploadRequest, quota_left: int | None
) -> tuple[Path, str, str]:
    """The converted version's folder, and its name and version."""
    src: Path = upload
    if is_archive(req.filename):
        src = staging / "src"
        limits = UnpackLimits(
            max_bytes=settings.HYPERBENCH_UPLOAD_MAX_UNPACKED_BYTES,
            max_files=settings.HYPERBENCH_UPLOAD_MAX_FILES,
            max_ratio=settings.HYPERBENCH_UPLOAD_MAX_RATIO,
            quota_bytes=quota_left,
        )
        unpack(upload, req.filename, src, limits)
    elif req.fmt == LAYOUT:
        raise UploadRefused("A layout upload is an archive: .zip, .tar, .tar.gz or .tgz.")
    else:  # one file, under a name of ours with the suffix the importer looks for
        single = staging / "src"
        single.mkdir()
        src = single / ("input" + _suffix(req.filename))
        if upload.stat().st_dev == single.stat().st_dev:
            os.link(upload, src)
        else:
            shutil.copyfile(upload, src)
    if req.fmt == LAYOUT:
        root = _layout(src, req)
        info = read_dataset_json(root)
        return root, info["name"], info["version"]
    out = staging / "out"
    options = Options(
        name=req.name,
        version=req.version,
        task=req.task,
        columns=req.columns or {},
        description=req.description,
        license=req.license,
    )
    run_import(req.fmt, src, out, options)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    if quota_left is not None and size > quota_left:
        raise OverQuota(f"converted, the dataset is {size} bytes, over the {quota_left} your quota leaves.")
    return out, req.name, req.version


def dataset_upload(
    *, upload: Path, request: UploadRequest, user: User | AnonymousUser, quota_left: int | None
) -> Registration:
    """Unpack, convert, store and register an uploaded dataset; see the module's docstring.

    Raises:
        UploadsUnavailable: no uploads root under the dataset roots, or an S3 uploads URI the
            server may not write (a bucket not allow-listed, no keys).
        UploadOverQuota: over ``quota_left`` bytes (the user's storage quota left).
        UploadRefused: anything else wrong with the upload (names the member, row or field).
        RegistrationConflict: the name and version are registered (or stored) already.
        S3UploadFailed: the converted version could not be written to S3 (nothing registered).
    """
    _check_request(request)
    target = s3_target()
    root = uploads_root()
    if (
        request.name
        and request.version
        and Dataset.objects.filter(name=request.name, version=request.version).exists()
    ):
        raise RegistrationConflict(
            f"{request.name}@{request.version} is already registered; dataset versions are immutable: "
            "upload under a new version."
        )
    staging = root / STAGING / uuid.uuid4().hex
    staging.mkdir()
    try:
        out, name, version = _converted(upload, staging, request, quota_left)
        if target is not None:
            return _store_s3(out, name, version, target, user)
        return _store_local(out, root / name / version, root, user)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _converted(
    upload: Path, staging: Path, request: UploadRequest, quota_left: int | None
) -> tuple[Path, str, str]:
    """:func:`_convert`, its refusals as the service's errors (no absolute server path in them)."""
    try:
        return _convert(upload, staging, request, quota_left)
    except OverQuota as e:
        raise UploadOverQuota(f"The upload is refused: {e}") from e
    except ArchiveRefused as e:
        raise UploadRefused(f"The archive is refused: {relative_to_roots(str(e))}") from e
    except ImportFailure as e:
        raise UploadRefused(
            f"The {request.fmt} upload is refused: {relative_to_roots(str(e))}",
            [relative_to_roots(p) for p in e.problems],
        ) from e


def _store_local(out: Path, final: Path, root: Path, user: User | AnonymousUser) -> Registration:
    """Move the converted version to ``final`` in one rename and register it (removed on failure)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(out, final)
    except OSError:
        raise RegistrationConflict(
            f"{final.parent.name}@{final.name} already has an uploaded folder; dataset versions are "
            "immutable: upload under a new version."
        ) from None
    try:
        return dataset_register(uri=final.as_uri() + "/", created_by=user)
    except BaseException:
        shutil.rmtree(final, ignore_errors=True)
        _remove_empty(final.parent, root)
        raise


def _store_s3(
    out: Path, name: str, version: str, target: tuple[str, str], user: User | AnonymousUser
) -> Registration:
    """Write the converted version to S3 (manifest last) and register its ``s3://`` URI.

    Nothing is written when the version is registered or its prefix holds objects already; on any
    failure after the first PUT, the objects written are removed and nothing is registered.
    """
    label = f"{name}@{version}"
    if Dataset.objects.filter(name=name, version=version).exists():
        raise RegistrationConflict(
            f"{label} is already registered; dataset versions are immutable: upload under a new version."
        )
    bucket, prefix = target
    key_prefix = s3uploads.version_prefix(prefix, name, version)
    client = s3uploads.web_s3_client()
    with _claimed(name, version):
        s3uploads.ensure_empty(client, bucket, key_prefix, label)
        written: list[str] = []
        try:
            uri = s3uploads.put_version(client, out, bucket, key_prefix, written)
            return dataset_register(uri=uri, created_by=user)
        except BaseException:
            s3uploads.remove_keys(client, bucket, written)
            raise


#: A claim this old belongs to an upload whose web process died (an upload is capped in bytes).
CLAIM_STALE = timedelta(hours=6)


@contextmanager
def _claimed(name: str, version: str) -> Iterator[None]:
    """Hold the one claim on writing ``name@version`` to S3 (RegistrationConflict if another
    upload holds it), committed before the first write and dropped when the block ends."""
    stale = timezone.now() - CLAIM_STALE
    UploadClaim.objects.filter(name=name, version=version, created_at__lt=stale).delete()
    try:
        with transaction.atomic():
            claim = UploadClaim.objects.create(name=name, version=version)
    except IntegrityError:
        raise RegistrationConflict(
            f"{name}@{version} is being uploaded by another request right now; dataset versions are "
            "immutable: if that upload fails, upload again, else choose a new version."
        ) from None
    try:
        yield
    finally:
        UploadClaim.objects.filter(pk=claim.pk).delete()


def _remove_empty(folder: Path, root: Path) -> None:
    try:
        if folder != root and folder.is_relative_to(root):
            folder.rmdir()
    except OSError:
        pass


def parse_columns(raw: str) -> dict[str, str]:
    """The ``columns`` form field: a JSON object of names to names."""
    if not raw:
        return {}
    try:
        value: Any = json.loads(raw)
    except ValueError:
        raise UploadRefused('columns must be a JSON object, e.g. {"answer": "gt"}.') from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str | int) for k, v in value.items()
    ):
        raise UploadRefused("columns must be a JSON object mapping names to names.")
    return {k: str(v) for k, v in value.items()}
