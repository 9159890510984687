"""The artifact store: run outputs addressed by URI, ``file://`` (default) or ``s3://``.

One small interface (:class:`ArtifactStore`: ``put_file``, ``get_file``,
``exists``, ``modified``, ``touch``, ``list``), two stores behind it, and :class:`Artifacts`, which routes
each URI to the store of its scheme. The tasks never build paths or keys of
their own beyond the layout in :mod:`worker.contract`.

Both stores keep two promises:

- **Atomic writes**: a reader sees the whole object or nothing. ``file://``
  writes a ``.part`` file, fsyncs it and renames it into place; ``s3://`` sends
  one PUT (or a multipart upload, which the server assembles at its
  ``CompleteMultipartUpload``), and S3 never shows a half-written object.
- **An allow-list**: only paths under the host's artifact roots
  (``HYPERBENCH_ARTIFACT_ROOTS``) and keys under its S3 roots
  (``HYPERBENCH_ARTIFACTS_S3_ROOTS``) are read or written. A URI arrives in a
  Celery message; it is a request, not a permission.

S3 calls have connect/read timeouts and a bounded number of attempts with
backoff (botocore's ``standard`` retry mode: 5xx, throttling, connection resets,
timeouts). What still fails after that becomes a transient :class:`HostError`
(the task retries a few times more, later) or a permanent one (no such bucket,
access denied), whose message says what to fix.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from worker.config import HostConfig
from worker.errors import HostError
from worker.s3 import (
    S3ClientSettings,
    S3UriError,
    certificate_problem,
    parse_s3_uri,
    s3_client,
    s3_uri,
)

# Content types set on upload, so that a presigned link opens in a browser as it should.
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".log": "text/plain; charset=utf-8",
}
# Error codes that more attempts will not fix: fail the stage with the reason at once.
_PERMANENT_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "InvalidBucketName",
        "NoSuchBucket",
        "NoSuchKey",
        "SignatureDoesNotMatch",
        "403",
        "404",
    }
)


def uri_join(base: str, *parts: str) -> str:
    return base.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts)


def content_type(name: str) -> str:
    return _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream")


class ArtifactStore(Protocol):
    """What a task may do with an artifact URI. Every method checks the allow-list first."""

    def put_file(self, local: Path, uri: str) -> str:
        """Publish ``local`` at ``uri`` atomically; return ``uri``."""
        ...

    def get_file(self, uri: str, local: Path) -> Path:
        """Copy the artifact to ``local`` (complete or not at all); return ``local``."""
        ...

    def exists(self, uri: str) -> bool: ...

    def modified(self, uri: str) -> float | None:
        """When the artifact was last written or touched (seconds since the epoch); None if missing."""
        ...

    def touch(self, uri: str) -> None:
        """Make the artifact's modification time now, its bytes unchanged (nothing if it is gone)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """URIs of the artifacts under ``prefix`` (a URI ending in ``/``), sorted."""
        ...


class FileStore:
    """``file://`` artifact store rooted in one of the allowed directories."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = [Path(r).resolve() for r in roots]

    def path_of(self, uri: str) -> Path:
        """The local path of ``uri``, resolved (symlinks followed) and checked against the roots."""
        parsed = urlparse(uri)
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            raise HostError(f"Artifact URI {uri!r} is not a file:// URI on this host.")
        path = Path(unquote(parsed.path)).resolve()
        if not any(path == r or path.is_relative_to(r) for r in self.roots):
            raise HostError(
                f"Artifact URI {uri!r} is outside this host's artifact roots "
                f"({', '.join(map(str, self.roots)) or 'none'}); set HYPERBENCH_ARTIFACT_ROOTS on the worker."
            )
        return path

    def exists(self, uri: str) -> bool:
        return self.path_of(uri).is_file()

    def modified(self, uri: str) -> float | None:
        try:
            return self.path_of(uri).stat().st_mtime
        except FileNotFoundError:
            return None

    def touch(self, uri: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path_of(uri))

    def put_file(self, local: Path, uri: str) -> str:
        dest = self.path_of(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + f".{os.getpid()}.part")
        try:
            shutil.copyfile(local, part)
            with open(part, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise HostError(f"Could not write artifact {uri}: {e}") from e
        return uri

    def get_file(self, uri: str, local: Path) -> Path:
        src = self.path_of(uri)
        if not src.is_file():
            raise HostError(f"Artifact {uri} is missing from the store.")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, local)
        return local

    def list(self, prefix: str) -> list[str]:
        root = self.path_of(prefix)
        if not root.is_dir():
            return []
        return sorted(p.as_uri() for p in root.rglob("*") if p.is_file() and not p.name.endswith(".part"))


@dataclass(frozen=True)
class S3StoreSettings:
    """Where and how the host writes ``s3://`` artifacts: from the host's settings only."""

    roots: tuple[str, ...]  # s3://bucket/prefix/ allow-list
    endpoint_url: str | None
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    multipart_threshold_bytes: int = 64 * 1024 * 1024
    multipart_chunk_bytes: int = 16 * 1024 * 1024


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key), through the one parser (:func:`worker.s3.parse_s3_uri`)."""
    try:
        return parse_s3_uri(uri)
    except S3UriError as e:
        raise HostError(f"Artifact URI {e}.") from None


class S3Store:
    """``s3://`` artifact store: boto3 with timeouts and bounded retries, keys under allowed roots."""

    def __init__(self, settings: S3StoreSettings, client: Any = None) -> None:
        self.settings = settings
        self._roots = [split_s3(r) for r in settings.roots]
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client(self.settings)
        return self._client

    def locate(self, uri: str) -> tuple[str, str]:
        """(bucket, key) of ``uri``, checked against the allowed roots."""
        bucket, key = split_s3(uri)
        for root_bucket, root_prefix in self._roots:
            if bucket == root_bucket and key.startswith(root_prefix):
                return bucket, key
        raise HostError(
            f"Artifact URI {uri!r} is outside this host's S3 artifact roots "
            f"({', '.join(self.settings.roots) or 'none'}); set HYPERBENCH_ARTIFACTS_S3_ROOTS on the worker."
        )

    def put_file(self, local: Path, uri: str) -> str:
        from boto3.s3.transfer import TransferConfig

        bucket, key = self.locate(uri)
        if key.endswith("/"):
            raise HostError(f"Artifact URI {uri!r} names a prefix, not an object.")
        config = TransferConfig(
            multipart_threshold=self.settings.multipart_threshold_bytes,
            multipart_chunksize=self.settings.multipart_chunk_bytes,
            max_concurrency=4,
        )
        # One PutObject, or a multipart upload that s3transfer aborts if a part fails:
        # either way the key shows the whole file or what it held before.
        self._call(
            f"upload {uri}",
            lambda: self.client.upload_file(
                str(local), bucket, key, ExtraArgs={"ContentType": content_type(key)}, Config=config
            ),
        )
        return uri

    def get_file(self, uri: str, local: Path) -> Path:
        bucket, key = self.locate(uri)
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + f".{os.getpid()}.part")
        try:
            self._call(f"download {uri}", lambda: self.client.download_file(bucket, key, str(part)))
            os.replace(part, local)
        finally:
            part.unlink(missing_ok=True)
        return local

    def exists(self, uri: str) -> bool:
        bucket, key = self.locate(uri)
        try:
            self._call(f"look up {uri}", lambda: self.client.head_object(Bucket=bucket, Key=key))
        except _Missing:
            return False
        return True

    def modified(self, uri: str) -> float | None:
        bucket, key = self.locate(uri)
        try:
            head = self._call(f"look up {uri}", lambda: self.client.head_object(Bucket=bucket, Key=key))
        except _Missing:
            return None
        return float(head["LastModified"].timestamp())

    def touch(self, uri: str) -> None:
        """A copy of the object onto itself (S3 has no other way to renew LastModified)."""
        bucket, key = self.locate(uri)
        try:
            self._call(
                f"touch {uri}",
                lambda: self.client.copy_object(
                    Bucket=bucket,
                    Key=key,
                    CopySource={"Bucket": bucket, "Key": key},
                    MetadataDirective="REPLACE",
                    ContentType=content_type(key),
                    Metadata={"hb-touched": str(int(time.time()))},
                ),
            )
        except _Missing:
            return

    def list(self, prefix: str) -> list[str]:
        bucket, key = self.locate(prefix)
        out: list[str] = []

        def pages() -> None:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                out.extend(s3_uri(bucket, obj["Key"]) for obj in page.get("Contents", []))

        self._call(f"list {prefix}", pages)
        return sorted(out)

    def _call(self, what: str, fn: Any) -> Any:
        """Run one boto3 operation (botocore retries inside); map what is left to HostError."""
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn()
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise _Missing(f"Could not {what}: the artifact is missing from the store.") from e
            raise _client_error(what, code, e, self.settings) from e
        except S3UploadFailedError as e:
            # s3transfer wraps the ClientError of a failed PUT or part; only its text carries the code.
            found = re.search(r"An error occurred \((\w+)\)", str(e))
            raise _client_error(what, found.group(1) if found else "", e, self.settings) from e
        except BotoCoreError as e:
            problem = certificate_problem(str(e), self.settings.endpoint_url)
            if problem:  # another attempt meets the same certificate
                raise HostError(f"Could not {what}: {problem}") from e
            # Connection refused/reset, timeouts: botocore already retried these.
            raise HostError(
                f"Could not {what}: {e} (gave up after {self.settings.max_attempts} attempts; "
                "is the S3 endpoint reachable from this host?)",
                permanent=False,
            ) from e


class _Missing(HostError):
    pass


def _client_error(what: str, code: str, e: Exception, s: S3StoreSettings) -> HostError:
    if code in ("AccessDenied", "403"):
        # The server's policy refused these keys: what to change is on one side or the other.
        roots = ", ".join(s.roots)
        return HostError(
            f"Could not {what}: S3 refused it to this host's keys (AccessDenied, AWS_ACCESS_KEY_ID="
            f"{s.access_key_id}). A host reads and writes artifacts only under the prefix its "
            f"S3 policy allows: make HYPERBENCH_ARTIFACTS_S3_ROOTS ({roots}) name that prefix, "
            "or grant these keys the prefix (docs/operations.md, 'S3 over HTTPS')."
        )
    if code in _PERMANENT_CODES:
        hint = {
            "NoSuchBucket": " The bucket does not exist: create it or fix HYPERBENCH_ARTIFACTS_URI.",
            "InvalidAccessKeyId": " Check AWS_ACCESS_KEY_ID on the host worker.",
            "SignatureDoesNotMatch": " Check AWS_SECRET_ACCESS_KEY on the host worker.",
        }.get(code, "")
        return HostError(f"Could not {what}: {code}.{hint}")
    return HostError(f"Could not {what}: {code or e} (gave up after retries).", permanent=False)


def _s3_client(s: S3StoreSettings) -> Any:
    """The shared factory's client (:func:`worker.s3.s3_client`: one per settings and process)."""
    if not s.access_key_id or not s.secret_access_key:
        raise HostError(
            "s3:// artifacts need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the host worker's "
            "environment."
        )
    return s3_client(
        S3ClientSettings(
            endpoint_url=s.endpoint_url,
            region=s.region,
            access_key_id=s.access_key_id,
            secret_access_key=s.secret_access_key,
            session_token=s.session_token or None,
            max_attempts=s.max_attempts,
            connect_timeout_s=s.connect_timeout_s,
            read_timeout_s=s.read_timeout_s,
        )
    )


class Artifacts:
    """Routes each artifact URI to the store of its scheme; the tasks' one handle on storage."""

    def __init__(self, file: FileStore, s3: S3Store | None = None) -> None:
        self.file = file
        self.s3 = s3

    def store(self, uri: str) -> ArtifactStore:
        scheme = urlparse(uri).scheme
        if scheme == "file":
            return self.file
        if scheme == "s3":
            if self.s3 is None:
                raise HostError(
                    f"Artifact URI {uri!r} is in S3, but this host has no S3 artifact roots; "
                    "set HYPERBENCH_ARTIFACTS_S3_ROOTS (and the S3 endpoint and keys) on the worker."
                )
            return self.s3
        raise HostError(f"Artifact URI {uri!r} has an unsupported scheme (file:// or s3:// only).")

    def put_file(self, local: Path, uri: str) -> str:
        return self.store(uri).put_file(local, uri)

    def get_file(self, uri: str, local: Path) -> Path:
        return self.store(uri).get_file(uri, local)

    def exists(self, uri: str) -> bool:
        return self.store(uri).exists(uri)

    def modified(self, uri: str) -> float | None:
        return self.store(uri).modified(uri)

    def touch(self, uri: str) -> None:
        self.store(uri).touch(uri)

    def list(self, prefix: str) -> list[str]:
        return self.store(prefix).list(prefix)


def artifacts_from_config(cfg: HostConfig) -> Artifacts:
    """The artifact stores a :class:`worker.config.HostConfig` allows."""
    s3 = None
    if cfg.artifact_s3_roots:
        s3 = S3Store(
            S3StoreSettings(
                roots=tuple(cfg.artifact_s3_roots),
                endpoint_url=cfg.s3_endpoint_url,
                region=cfg.s3_region,
                access_key_id=cfg.s3_access_key_id,
                secret_access_key=cfg.s3_secret_access_key,
                session_token=cfg.s3_session_token or None,
                max_attempts=cfg.artifact_s3_max_attempts,
                connect_timeout_s=cfg.artifact_s3_connect_timeout_s,
                read_timeout_s=cfg.artifact_s3_read_timeout_s,
            )
        )
    return Artifacts(FileStore(cfg.artifact_roots), s3)
