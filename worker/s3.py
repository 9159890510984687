"""S3 names and clients, written once for the web side, the host worker and the artifact store.

- :func:`parse_s3_uri` is the one parser of ``s3://bucket/key`` and ``s3://bucket/prefix/``
  URIs: the dataset registration (web), the node cache (host), the artifact store (host)
  and the artifact downloads (web) all read URIs through it, so a URI one side accepts
  the other cannot read differently.
- :func:`s3_client` is the one boto3 client factory: the endpoint is always explicit
  (:func:`endpoint_for`; left to botocore it could come from ``AWS_ENDPOINT_URL`` or a
  config file), path-style addressing on a custom endpoint, bounded standard retries and
  timeouts; one client per settings and process.

The standard library and boto3 only (imported when a client is made): no Django, so the
web side may import it (pyproject's import-linter contracts allow exactly the shared
modules), and no aiohttp or obstore.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse


class S3UriError(ValueError):
    """A URI that is not a plain ``s3://bucket/key``; the message says why (callers add context)."""


class S3Uri(NamedTuple):
    bucket: str
    key: str  # unquoted; for a prefix: empty or ending in "/"


def parse_s3_uri(uri: str, *, prefix: bool = False) -> S3Uri:
    """``s3://bucket/key`` -> (bucket, key); with ``prefix``, the key is a prefix ending in ``/``.

    Refused (S3UriError): another scheme, no bucket, a host, port or credentials in the
    bucket's place, a query, fragment or ``;params``, a backslash, and ``.``, ``..`` or
    empty segments (a trailing ``/`` aside).
    """
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise S3UriError(f"{uri!r} is not an s3://bucket/{'prefix/' if prefix else 'key'} URI")
    if "@" in parsed.netloc or ":" in parsed.netloc or parsed.query or parsed.fragment or parsed.params:
        raise S3UriError(
            f"{uri!r} is not a plain s3:// URI: it cannot carry a host, port, credentials, query or fragment"
        )
    key = unquote(parsed.path).lstrip("/")
    if prefix and key and not key.endswith("/"):
        key += "/"
    segments = key.split("/")
    # A trailing "/" (a prefix) leaves one empty last segment; any other empty one is refused.
    if any(seg in (".", "..") for seg in segments) or "" in segments[:-1] or "\\" in key:
        raise S3UriError(f"{uri!r} has an empty, '.' or '..' segment")
    return S3Uri(parsed.netloc, key)


def s3_uri(bucket: str, key: str) -> str:
    """The URI of ``key`` in ``bucket`` (quoted as :func:`parse_s3_uri` unquotes it)."""
    from urllib.parse import quote

    return f"s3://{bucket}/{quote(key, safe='/-_.~')}"


def endpoint_for(endpoint_url: str | None, region: str) -> str:
    """The endpoint to use: the configured one, else AWS's regional endpoint; never None."""
    return endpoint_url.rstrip("/") if endpoint_url else f"https://s3.{region}.amazonaws.com"


@dataclass(frozen=True)
class S3ClientSettings:
    """Everything a client is made from; the same settings give the same (cached) client."""

    endpoint_url: str | None
    region: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    max_attempts: int = 3  # the first try included
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_pool_connections: int = 16


def s3_client(s: S3ClientSettings) -> Any:
    """A boto3 S3 client (thread-safe, pooled), one per settings, CA bundle and process.

    The keys are the given ones only (no credential chain); the caller checks they are set
    and says where they come from on its side. A private CA is botocore's own setting,
    ``AWS_CA_BUNDLE``: a client made with one is not reused once it changes.
    """
    return _s3_client(s, os.environ.get("AWS_CA_BUNDLE", ""))


@functools.lru_cache(maxsize=8)
def _s3_client(s: S3ClientSettings, _ca_bundle: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_for(s.endpoint_url, s.region),
        region_name=s.region,
        aws_access_key_id=s.access_key_id,
        aws_secret_access_key=s.secret_access_key,
        aws_session_token=s.session_token or None,
        config=Config(
            signature_version="s3v4",
            # Path style for MinIO/SeaweedFS-like endpoints (as the node cache reads them);
            # AWS picks its own.
            s3={"addressing_style": "path" if s.endpoint_url else "auto"},
            # total_max_attempts counts the first try too (max_attempts would not).
            retries={"mode": "standard", "total_max_attempts": max(1, s.max_attempts)},
            connect_timeout=s.connect_timeout_s,
            read_timeout=s.read_timeout_s,
            max_pool_connections=s.max_pool_connections,
        ),
    )


# What a TLS client says when it does not trust a server's certificate: rustls (the node cache,
# through obstore: ``InvalidCertificate(UnknownIssuer)``) and OpenSSL (boto3: ``[SSL:
# CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate``).
_CERT_ERROR = re.compile(r"InvalidCertificate\(\s*(\w+)|certificate verify failed: ([^(\]]+)", re.I)
_UNTRUSTED, _WRONG_NAME, _EXPIRED = (
    "it is not signed by a CA this host trusts",
    "it was not issued for the endpoint's host name",
    "it has expired or is not valid yet",
)
_CERT_WHY = (
    (re.compile(r"UnknownIssuer|local issuer|self[- ]signed", re.I), _UNTRUSTED),
    (re.compile(r"NotValidForName|Hostname mismatch", re.I), _WRONG_NAME),
    (re.compile(r"Expired|NotValidYet|not yet valid", re.I), _EXPIRED),
)


def certificate_problem(text: str, endpoint: str | None) -> str | None:
    """A sentence a person can act on when ``text`` (a client's error) is a refused certificate."""
    m = _CERT_ERROR.search(text)
    if m is None:
        return None
    reason = (m.group(1) or m.group(2)).strip()
    why = next((w for p, w in _CERT_WHY if p.search(reason)), f"it could not be verified ({reason})")
    where = endpoint.rstrip("/") if endpoint else "the S3 endpoint"
    return (
        f"this host does not trust the TLS certificate of {where}: {why} ({reason}). If a private "
        "CA signed it, set AWS_CA_BUNDLE on the host worker to that CA's certificate file (the node "
        "cache and the artifact store both read it); if the host name is wrong, fix "
        "HYPERBENCH_S3_ENDPOINT_URL. Certificate checks are never turned off."
    )
