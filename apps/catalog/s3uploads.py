"""An uploaded dataset version stored in the S3 dataset bucket (``HYPERBENCH_UPLOADS_URI=s3://...``).

The version is converted locally first (apps/catalog/uploads.py); :func:`put_version` then writes
its files under ``s3://<bucket>/<prefix><name>/<version>/`` with the server's endpoint and keys
(the web side's one client factory, :func:`apps.catalog.services.web_s3_client`): the images
first, then ``dataset.json``, ``manifest.jsonl`` last, so a prefix with a manifest is a whole
upload. :func:`remove_keys` takes back what an upload wrote when anything after fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from apps.catalog.services import RegistrationConflict, RegistrationError, s3_location, web_s3_client
from worker.manifest import DATASET_JSON, MANIFEST
from worker.s3 import s3_uri

log = logging.getLogger(__name__)

#: PUTs in flight while a version is written.
PUT_CONCURRENCY = 8


class S3UploadFailed(RegistrationError):
    """The converted version could not be written to S3 (a 400 like any registration error)."""


def s3_target(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of ``HYPERBENCH_UPLOADS_URI``: allow-listed, keys set (RegistrationError if not)."""
    return s3_location(uri)


def version_prefix(prefix: str, name: str, version: str) -> str:
    return f"{prefix}{name}/{version}/"


def ensure_empty(client: Any, bucket: str, prefix: str, label: str) -> None:
    """A RegistrationConflict when objects exist under ``prefix`` already (versions are immutable)."""
    try:
        found = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
    except (BotoCoreError, ClientError) as e:
        raise S3UploadFailed(f"S3 could not be listed at {s3_uri(bucket, prefix)}: {e}") from e
    if found:
        raise RegistrationConflict(
            f"{label} already has objects at {s3_uri(bucket, prefix)}; dataset versions are immutable: "
            "upload under a new version."
        )


def put_version(client: Any, folder: Path, bucket: str, prefix: str, written: list[str]) -> str:
    """Write ``folder`` under ``prefix`` (manifest last); every key tried is added to ``written``."""
    last = [folder / DATASET_JSON, folder / MANIFEST]
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and p not in last]

    def put(path: Path) -> None:
        key = prefix + path.relative_to(folder).as_posix()
        written.append(key)  # list.append is atomic: safe from the pool's threads
        client.upload_file(str(path), bucket, key)

    try:
        with ThreadPoolExecutor(PUT_CONCURRENCY) as pool:
            list(pool.map(put, files))
        for path in last:
            put(path)
    except (BotoCoreError, ClientError, S3UploadFailedError, OSError) as e:
        raise S3UploadFailed(
            f"The converted dataset could not be written to {s3_uri(bucket, prefix)}: {e}; nothing was "
            "registered and what was written is removed."
        ) from e
    return s3_uri(bucket, prefix)


def remove_keys(client: Any, bucket: str, keys: Iterable[str]) -> None:
    """Delete ``keys`` (best effort: a failure is logged, the caller's error stands)."""
    todo = sorted(set(keys), key=lambda k: (not k.endswith(MANIFEST), k))  # the manifest first
    for i in range(0, len(todo), 1000):
        batch = todo[i : i + 1000]
        try:
            objects = [{"Key": k} for k in batch]
            client.delete_objects(Bucket=bucket, Delete={"Objects": objects, "Quiet": True})
        except (BotoCoreError, ClientError) as e:
            log.error("an upload's objects could not be removed from %s: %s", s3_uri(bucket, batch[0]), e)


__all__ = [
    "S3UploadFailed",
    "ensure_empty",
    "put_version",
    "remove_keys",
    "s3_target",
    "version_prefix",
    "web_s3_client",
]
