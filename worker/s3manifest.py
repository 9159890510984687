"""Validate a dataset version that lives under an S3 prefix, streaming (for registration).

The web side calls :func:`validate_s3` with a boto3 client it built from its own
settings (endpoint, keys, allow-listed buckets: never from the request). It
applies the same rules as :func:`worker.manifest.validate_local`, line by line,
and checks that each image object exists with the declared size against a
listing of the prefix. What grows with the dataset (ids seen, rows, the listing)
is kept in a temporary SQLite file, so memory stays flat.

Needs only boto3 and the standard library; no Django, no aiohttp.
"""

from __future__ import annotations

import hashlib
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from worker.manifest import (
    DATASET_JSON,
    MANIFEST,
    DatasetInfo,
    ManifestError,
    ManifestSummary,
    _check_id,
    _check_task_fields,
    _parse_line,
    _Problems,
    check_image_path,
    read_dataset_json,
)
from worker.s3 import S3UriError, parse_s3_uri

_SHA256_CHARS = frozenset("0123456789abcdef")


def split_s3_uri(uri: str, buckets: Iterable[str] | None = None) -> tuple[str, str]:
    """``s3://bucket/prefix/`` -> (bucket, prefix with a trailing ``/``, or empty).

    Raises:
        ManifestError: not a plain s3 URI (:func:`worker.s3.parse_s3_uri`), or a bucket outside ``buckets``.
    """
    try:
        bucket, prefix = parse_s3_uri(uri, prefix=True)
    except S3UriError as e:
        raise ManifestError([str(e)]) from None
    if buckets is not None and bucket not in set(buckets):
        raise ManifestError([f"bucket {bucket!r} is not one of the allowed buckets"])
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


class _SpillIndex:
    """The validator's growing state (ids seen, rows to check, objects listed) in a temp SQLite file.

    Keeps registration memory flat however large the manifest is: SQLite holds a
    bounded page cache, the rest stays on disk.
    """

    def __init__(self, directory: str) -> None:
        self.db = sqlite3.connect(Path(directory, "index.sqlite3"))
        self.db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA cache_size = -2048;
            CREATE TABLE ids (id TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE rows (line INTEGER PRIMARY KEY, image TEXT NOT NULL, declared INTEGER);
            CREATE TABLE objects (key TEXT PRIMARY KEY, size INTEGER NOT NULL) WITHOUT ROWID;
            """
        )

    # The two methods worker.manifest._check_id needs of its ``seen`` set.
    def __contains__(self, sample_id: object) -> bool:
        return self.db.execute("SELECT 1 FROM ids WHERE id = ?", (sample_id,)).fetchone() is not None

    def add(self, sample_id: str) -> None:
        self.db.execute("INSERT INTO ids VALUES (?)", (sample_id,))

    def close(self) -> None:
        self.db.close()


def validate_s3(
    uri: str,
    client: Any,
    *,
    buckets: Iterable[str] | None = None,
) -> ManifestSummary:
    """Validate ``dataset.json`` and ``manifest.jsonl`` under an S3 prefix, and every object they name.

    The manifest is streamed once; the objects are checked against one listing of
    the prefix (a request per 1,000 objects, not a HEAD per object: 100,000
    samples take about 100 requests), joined on disk, so memory stays flat.

    Args:
        uri: ``s3://bucket/prefix/``.
        client: A boto3 S3 client (configured with the server's endpoint and keys).
        buckets: The allow-list; None skips the check (the caller already did it).

    Returns:
        The manifest's sha256, sample count, total bytes (from S3's sizes), name, version and task.

    Raises:
        ManifestError: every problem found (bounded), each naming the manifest line.
    """
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
        index = _SpillIndex(tmp)
        try:
            return _validate_rows(bucket, prefix, task, info, body, client, index)
        finally:
            index.close()


def _check_size_and_sha(sample: dict[str, Any], where: str, problems: _Problems) -> int | None:
    """The declared size (None when absent or wrong); a wrong size or sha256 is a problem."""
    declared = sample.get("size")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int) or declared < 0):
        problems.add(f"{where}: 'size' must be a non-negative integer, not {declared!r}")
        declared = None
    sha = sample.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _SHA256_CHARS):
        problems.add(f"{where}: 'sha256' must be 64 lowercase hex digits, not {sha!r}")
    return declared


def _validate_rows(
    bucket: str,
    prefix: str,
    task: str,
    info: DatasetInfo,
    body: Any,
    client: Any,
    index: _SpillIndex,
) -> ManifestSummary:
    problems = _Problems()
    digest = hashlib.sha256()
    sample_count = 0
    db = index.db
    for lineno, line in enumerate(_lines(body, digest), start=1):
        where = f"{MANIFEST} line {lineno}"
        sample = _parse_line(line, where, problems)
        if sample is None:
            continue
        sample_count += 1
        _check_id(sample, where, index, problems)  # type: ignore[arg-type]  # a set on disk
        _check_task_fields(sample, task, where, problems)
        if "image" not in sample:
            problems.add(f"{where}: missing field 'image'")
            continue
        image = sample["image"]
        wrong = check_image_path(image)
        if wrong is not None:
            problems.add(f"{where}: {wrong}")
            continue
        declared = _check_size_and_sha(sample, where, problems)
        db.execute("INSERT INTO rows VALUES (?, ?, ?)", (lineno, image, declared))
    if sample_count == 0 and problems.count == 0:
        problems.add(f"{MANIFEST}: no samples (the manifest is empty)")

    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            db.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?)",
                ((o["Key"][len(prefix) :], int(o["Size"])) for o in page.get("Contents", ())),
            )
    except (BotoCoreError, ClientError) as e:
        raise ManifestError([f"cannot list s3://{bucket}/{prefix} to check the images: {e}"]) from e

    total_bytes = 0
    for lineno, image, declared, size in db.execute(
        "SELECT r.line, r.image, r.declared, o.size FROM rows r LEFT JOIN objects o ON o.key = r.image "
        "ORDER BY r.line"
    ):
        where = f"{MANIFEST} line {lineno}"
        if size is None:
            problems.add(f"{where}: image {image!r} does not exist at s3://{bucket}/{prefix}{image}")
            continue
        total_bytes += size
        if declared is not None and declared != size:
            problems.add(f"{where}: image {image!r} has {size} bytes in S3, the manifest says {declared}")
    problems.raise_if_any()
    return ManifestSummary(
        manifest_sha256=digest.hexdigest(),
        sample_count=sample_count,
        total_bytes=total_bytes,
        task=info["task"],
        name=info["name"],
        version=info["version"],
    )
