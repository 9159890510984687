"""Run artifacts on the web side: find, open and link them, in ``file://`` or ``s3://`` stores.

The host workers write artifacts (``worker/storage.py``); the web side only
reads them. ``file://`` artifacts are streamed by the web process; ``s3://``
ones are streamed or handed out as presigned GET URLs, signed with the server's
S3 settings (``HYPERBENCH_S3_*``, shared with dataset registration). A URI in the
DB is what a host reported, not a permission: it is served only when it lies
under ``HYPERBENCH_ARTIFACTS_URI`` or one of ``HYPERBENCH_ARTIFACTS_S3_ROOTS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from django.conf import settings
from django.utils.http import content_disposition_header

from apps.catalog.services import web_s3_client
from worker.s3 import S3UriError, parse_s3_uri

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".log": "text/plain; charset=utf-8",
}


class ArtifactError(Exception):
    """An artifact cannot be read; the message says why."""


@dataclass(frozen=True)
class Location:
    """Where an allowed artifact lives: a local path, or a bucket and key."""

    uri: str
    path: Path | None = None
    bucket: str = ""
    key: str = ""

    @property
    def is_s3(self) -> bool:
        return self.path is None

    @property
    def filename(self) -> str:
        """The stored file's own name (``metrics.json``), the last segment of its path or key."""
        return self.path.name if self.path is not None else self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        name = self.filename
        return name[name.rfind(".") :] if "." in name else ""

    @property
    def content_type(self) -> str:
        return _CONTENT_TYPES.get(self.suffix, "application/octet-stream")


def download_filename(name: str, loc: Location) -> str:
    """The file name a download is saved under: the artifact's API name, flattened, with the
    stored file's extension (``metrics`` -> ``metrics.json``, ``shards/0/predictions`` ->
    ``shards-0-predictions.jsonl``, ``logs/evaluate/attempt-1.log`` -> ``logs-evaluate-attempt-1.log``).
    """
    base = name.strip("/").replace("/", "-") or loc.filename
    suffix = loc.suffix
    return base if not suffix or base.endswith(suffix) else base + suffix


def attachment_header(name: str, loc: Location) -> str:
    """``Content-Disposition`` of an artifact download: ``attachment; filename="metrics.json"``
    (RFC 6266; a name outside ASCII goes in ``filename*``)."""
    return content_disposition_header(True, download_filename(name, loc)) or "attachment"


def _split_s3(uri: str) -> tuple[str, str] | None:
    try:
        return parse_s3_uri(uri)
    except S3UriError:
        return None


def _s3_roots() -> list[tuple[str, str]]:
    roots = [settings.HYPERBENCH_ARTIFACTS_URI, *getattr(settings, "HYPERBENCH_ARTIFACTS_S3_ROOTS", [])]
    out = []
    for root in roots:
        split = _split_s3(root.rstrip("/") + "/")
        if split is not None:
            out.append(split)
    return out


def _file_root() -> Path | None:
    parsed = urlparse(settings.HYPERBENCH_ARTIFACTS_URI)
    return Path(unquote(parsed.path)).resolve() if parsed.scheme == "file" else None


def locate(uri: str) -> Location | None:
    """The location of ``uri`` if the store may serve it, else None. Does no I/O for s3://."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        root = _file_root()
        if root is None or parsed.netloc not in ("", "localhost"):
            return None
        # resolve(): a symlink under the root that points elsewhere is outside it.
        path = Path(unquote(parsed.path)).resolve()
        return Location(uri=uri, path=path) if path.is_relative_to(root) else None
    split = _split_s3(uri)
    if split is None:
        return None
    bucket, key = split
    if any(bucket == b and key.startswith(prefix) for b, prefix in _s3_roots()):
        return Location(uri=uri, bucket=bucket, key=key)
    return None


def s3_client_of_server() -> Any:
    """The web server's S3 client (its HYPERBENCH_S3_* settings). Raises ArtifactError without keys."""
    return _client()


def _client() -> Any:
    if not settings.HYPERBENCH_S3_ACCESS_KEY_ID or not settings.HYPERBENCH_S3_SECRET_ACCESS_KEY:
        raise ArtifactError(
            "s3:// artifacts need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on the web server."
        )
    return web_s3_client(max_attempts=3)


def presigned_url(loc: Location, *, filename: str | None = None) -> str:
    """A GET URL for an s3:// artifact, valid for ``HYPERBENCH_ARTIFACTS_URL_TTL_S`` seconds.

    S3 answers it as a download named after ``filename`` (the artifact's API name) with the
    stored file's extension: ``Content-Disposition: attachment; filename="metrics.json"``.
    """
    params: dict[str, str] = {
        "Bucket": loc.bucket,
        "Key": loc.key,
        "ResponseContentType": loc.content_type,
        "ResponseContentDisposition": attachment_header(filename or loc.filename, loc),
    }
    return str(
        _client().generate_presigned_url(
            "get_object", Params=params, ExpiresIn=int(settings.HYPERBENCH_ARTIFACTS_URL_TTL_S)
        )
    )


def open_stream(loc: Location) -> tuple[Iterator[bytes], int | None]:
    """The artifact's bytes in chunks, and its size if known. Raises ArtifactError if it is missing."""
    if loc.path is not None:
        if not loc.path.is_file():
            raise ArtifactError(f"Artifact {loc.uri} is missing from the store.")
        f = loc.path.open("rb")
        return _file_chunks(f), loc.path.stat().st_size
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        obj = _client().get_object(Bucket=loc.bucket, Key=loc.key)
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404", "NotFound"):
            raise ArtifactError(f"Artifact {loc.uri} is missing from the store.") from e
        raise ArtifactError(f"Artifact {loc.uri} could not be read from S3 ({code}).") from e
    except BotoCoreError as e:
        raise ArtifactError(f"Artifact {loc.uri} could not be read from S3 ({e}).") from e
    return obj["Body"].iter_chunks(256 * 1024), int(obj.get("ContentLength") or 0) or None


def _file_chunks(f: Any) -> Iterator[bytes]:
    with f:
        while chunk := f.read(256 * 1024):
            yield chunk


def iter_lines(uri: str) -> Iterator[bytes]:
    """The lines of an allowed artifact, streamed (memory stays flat). Nothing if it is not allowed."""
    loc = locate(uri)
    if loc is None:
        return
    chunks, _ = open_stream(loc)
    rest = b""
    for chunk in chunks:
        rest += chunk
        *lines, rest = rest.split(b"\n")
        yield from lines
    if rest:
        yield rest


def list_under(prefix: str) -> list[str]:
    """URIs of the allowed artifacts under ``prefix`` (ending in ``/``), sorted; [] when none."""
    loc = locate(prefix.rstrip("/") + "/")
    if loc is None:
        return []
    if loc.path is not None:
        if not loc.path.is_dir():
            return []
        return sorted(p.as_uri() for p in loc.path.rglob("*") if p.is_file() and not p.name.endswith(".part"))
    from botocore.exceptions import BotoCoreError, ClientError

    out: list[str] = []
    try:
        for page in _client().get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key):
            out.extend(f"s3://{loc.bucket}/{quote(o['Key'], safe='/-_.~')}" for o in page.get("Contents", []))
    except (BotoCoreError, ClientError) as e:
        raise ArtifactError(f"The artifacts under {prefix} could not be listed ({e}).") from e
    return sorted(out)
