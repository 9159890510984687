"""Validate a dataset version that lives under an S3 prefix, streaming (for registration).

The web side calls :func:`validate_s3` with a boto3 client it built from its own
settings (endpoint, keys, allow-listed buckets: never from the request). It
applies the same rules as :func:`worker.manifest.validate_local`, line by line,
and checks that each image object exists with the declared size (HEAD requests,
a bounded number in flight). Memory stays flat apart from the set of ids (the
duplicate check), as in the local validator.

Needs only boto3 and the standard library; no Django, no aiohttp.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from worker.manifest import (
    DATASET_JSON,
    MANIFEST,
    ManifestError,
    ManifestSummary,
    _check_id,
    _check_task_fields,
    _parse_line,
    _Problems,
    check_image_path,
    read_dataset_json,
)

_SHA256_CHARS = frozenset("0123456789abcdef")


def split_s3_uri(uri: str, buckets: Iterable[str] | None = None) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix with a trailing ``/``, or empty).

    Raises:
        ManifestError: not an s3 URI, a ``.``/``..`` segment, or a bucket outside ``buckets``.
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ManifestError([f"{uri!r} is not an s3://bucket/prefix/ URI"])
    bucket = parsed.netloc
    if buckets is not None and bucket not in set(buckets):
        raise ManifestError([f"bucket {bucket!r} is not one of the allowed buckets"])
    prefix = unquote(parsed.path).lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise ManifestError([f"{uri!r} has a '.' or '..' segment"])
    return bucket, prefix


def _lines(body: Any, digest: Any) -> Iterator[bytes]:
    """Raw lines (with their newline) of a streaming body, hashing every byte."""
    rest = b""
    for chunk in body.iter_chunks(1024 * 1024):
        digest.update(chunk)
        rest += chunk
        start = 0
        while (end := rest.find(b"\n", start)) >= 0:
            yield rest[start : end + 1]
            start = end + 1
        rest = rest[start:]
    if rest:
        yield rest


def validate_s3(
    uri: str,
    client: Any,
    *,
    buckets: Iterable[str] | None = None,
    head_concurrency: int = 32,
) -> ManifestSummary:
    """Validate ``dataset.json`` and ``manifest.jsonl`` under an S3 prefix, and every object they name.

    Args:
        uri: ``s3://bucket/prefix/``.
        client: A boto3 S3 client (configured with the server's endpoint and keys).
        buckets: The allow-list; None skips the check (the caller already did it).
        head_concurrency: HEAD requests in flight.

    Returns:
        The manifest's sha256, sample count, total bytes (from S3's sizes), name, version and task.

    Raises:
        ManifestError: every problem found (bounded), each naming the manifest line.
    """
    from botocore.exceptions import ClientError

    bucket, prefix = split_s3_uri(uri, buckets)
    try:
        raw = client.get_object(Bucket=bucket, Key=prefix + DATASET_JSON)["Body"].read(1024 * 1024)
    except ClientError as e:
        raise ManifestError(
            [f"{DATASET_JSON}: cannot read s3://{bucket}/{prefix}{DATASET_JSON}: {e}"]
        ) from None
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, DATASET_JSON).write_bytes(raw)
        info = read_dataset_json(Path(tmp))
    task = info["task"]
    try:
        body = client.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"]
    except ClientError as e:
        raise ManifestError([f"{MANIFEST}: cannot read s3://{bucket}/{prefix}{MANIFEST}: {e}"]) from None

    problems = _Problems()
    digest = hashlib.sha256()
    seen: set[str] = set()
    sample_count = 0
    total_bytes = 0
    window: deque[tuple[str, str, int | None, Future[int | None]]] = deque()

    def head(key: str) -> int | None:
        try:
            return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def settle(limit: int) -> None:
        nonlocal total_bytes
        while len(window) > limit:
            where, image, declared, fut = window.popleft()
            try:
                size = fut.result()
            except ClientError as e:
                problems.add(f"{where}: image {image!r} cannot be checked in S3: {e}")
                continue
            if size is None:
                problems.add(f"{where}: image {image!r} does not exist at s3://{bucket}/{prefix}{image}")
                continue
            total_bytes += size
            if declared is not None and declared != size:
                problems.add(f"{where}: image {image!r} has {size} bytes in S3, the manifest says {declared}")

    with ThreadPoolExecutor(max_workers=max(1, head_concurrency)) as pool:
        for lineno, line in enumerate(_lines(body, digest), start=1):
            where = f"{MANIFEST} line {lineno}"
            sample = _parse_line(line, where, problems)
            if sample is None:
                continue
            sample_count += 1
            _check_id(sample, where, seen, problems)
            _check_task_fields(sample, task, where, problems)
            if "image" not in sample:
                problems.add(f"{where}: missing field 'image'")
                continue
            image = sample["image"]
            wrong = check_image_path(image)
            if wrong is not None:
                problems.add(f"{where}: {wrong}")
                continue
            declared = sample.get("size")
            if declared is not None and (
                isinstance(declared, bool) or not isinstance(declared, int) or declared < 0
            ):
                problems.add(f"{where}: 'size' must be a non-negative integer, not {declared!r}")
                declared = None
            sha = sample.get("sha256")
            if sha is not None and not (
                isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_CHARS
            ):
                problems.add(f"{where}: 'sha256' must be 64 lowercase hex digits, not {sha!r}")
            window.append((where, image, declared, pool.submit(head, prefix + image)))
            settle(head_concurrency * 4)
        settle(0)
    if sample_count == 0 and problems.count == 0:
        problems.add(f"{MANIFEST}: no samples (the manifest is empty)")
    problems.raise_if_any()
    return ManifestSummary(
        manifest_sha256=digest.hexdigest(),
        sample_count=sample_count,
        total_bytes=total_bytes,
        task=task,
        name=info["name"],
        version=info["version"],
    )
