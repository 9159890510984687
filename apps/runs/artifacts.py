"""Run artifacts on the web side: find, open and link them, in ``file://`` or ``s3://`` stores.

The host workers write artifacts (``worker/storage.py``); the web side only
reads them. ``file://`` artifacts are streamed by the web process; ``s3://``
ones are streamed or handed out as presigned GET URLs, signed with the server's
S3 settings (``HYPERBENCH_S3_*``, shared with dataset registration). A URI in the
DB is what a host reported, not a permission: it is served only when it lies
under ``HYPERBENCH_ARTIFACTS_URI`` or one of ``HYPERBENCH_ARTIFACTS_S3_ROOTS``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

from django.conf import settings

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
    def content_type(self) -> str:
        name = self.path.name if self.path is not None else self.key.rsplit("/", 1)[-1]
        suffix = name[name.rfind(".") :] if "." in name else ""
        return _CONTENT_TYPES.get(suffix, "application/octet-stream")


def _split_s3(uri: str) -> tuple[str, str] | None:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment or parsed.params:
        return None
    if "@" in parsed.netloc or ":" in parsed.netloc:
        return None
    key = unquote(parsed.path).lstrip("/")
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments) or "" in segments[:-1] or "\\" in key:
        return None
    return parsed.netloc, key


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


def _client_settings() -> tuple[Any, ...]:
    return (
        # Always explicit: left to botocore, the endpoint could come from AWS_ENDPOINT_URL or a config file.
        settings.HYPERBENCH_S3_ENDPOINT_URL or f"https://s3.{settings.HYPERBENCH_S3_REGION}.amazonaws.com",
        settings.HYPERBENCH_S3_REGION,
        settings.HYPERBENCH_S3_ACCESS_KEY_ID,
        settings.HYPERBENCH_S3_SECRET_ACCESS_KEY,
        settings.HYPERBENCH_S3_SESSION_TOKEN,
        bool(settings.HYPERBENCH_S3_ENDPOINT_URL),
        settings.HYPERBENCH_S3_TIMEOUT_S,
    )


@functools.lru_cache(maxsize=4)
def _client_for(
    endpoint: str, region: str, key_id: str, secret: str, token: str, custom: bool, timeout_s: int
) -> Any:
    import boto3
    from botocore.config import Config

    if not key_id or not secret:
        raise ArtifactError(
            "s3:// artifacts need AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY on the web server."
        )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token or None,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if custom else "auto"},
            connect_timeout=timeout_s,
            read_timeout=timeout_s,
            retries={"mode": "standard", "total_max_attempts": 3},
        ),
    )


def _client() -> Any:
    return _client_for(*_client_settings())


def presigned_url(loc: Location, *, filename: str | None = None) -> str:
    """A GET URL for an s3:// artifact, valid for ``HYPERBENCH_ARTIFACTS_URL_TTL_S`` seconds."""
    params: dict[str, str] = {"Bucket": loc.bucket, "Key": loc.key, "ResponseContentType": loc.content_type}
    if filename:
        params["ResponseContentDisposition"] = f'inline; filename="{quote(filename)}"'
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
