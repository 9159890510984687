"""HTTP to the HyperBench API: one session with the token, errors turned into one-line CliErrors."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from hyperbench_cli import __version__
from hyperbench_cli.errors import EXIT_API, EXIT_AUTH, EXIT_USAGE, CliError

TIMEOUT_S = 30.0
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def clean(text: str, limit: int = 600) -> str:
    """One line of text without control characters (no terminal escapes from a server's message)."""
    text = _UNPRINTABLE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def server_message(r: requests.Response) -> str:
    """The server's own words: DRF's ``detail``, or ``field: problem`` pairs, or the body's first line."""
    try:
        body: Any = r.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body:
        parts = []
        for key, value in body.items():
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            elif isinstance(value, dict):
                value = "; ".join(f"{k}: {v}" for k, v in value.items())
            parts.append(str(value) if key in ("detail", "non_field_errors") else f"{key}: {value}")
        return clean("; ".join(parts))
    if isinstance(body, list) and body:
        return clean("; ".join(str(v) for v in body))
    text = r.text.strip().splitlines()[0] if r.text.strip() else ""
    if text.startswith("<"):  # an HTML error page (a proxy, Django's debug page): say no more than its status
        text = ""
    return clean(text) or r.reason or "no message"


def http_error(method: str, path: str, r: requests.Response) -> CliError:
    status, msg = r.status_code, server_message(r)
    where = f"{method} {path}"
    if status == 401:
        return CliError(
            f"authentication failed (HTTP 401 on {where}): {msg} "
            "Log in with `hyperbench login`, or check --token / HYPERBENCH_TOKEN.",
            EXIT_AUTH,
            status=status,
        )
    if status == 403:
        return CliError(f"permission denied (HTTP 403 on {where}): {msg}", EXIT_AUTH, status=status)
    if status == 404:
        return CliError(f"not found (HTTP 404 on {where}): {msg}", EXIT_API, status=status)
    if status == 429:
        retry = r.headers.get("Retry-After")
        after = f" Retry after {retry} s (Retry-After)." if retry else ""
        return CliError(f"too many requests (HTTP 429 on {where}): {msg}{after}", EXIT_API, status=status)
    if status >= 500:
        return CliError(f"server error (HTTP {status} on {where}): {msg}", EXIT_API, status=status)
    return CliError(f"refused (HTTP {status} on {where}): {msg}", EXIT_API, status=status)


class Api:
    def __init__(self, url: str, token: str | None, timeout_s: float = TIMEOUT_S) -> None:
        self.base = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"hyperbench-cli/{__version__}"
        self.session.headers["Accept"] = "application/json"
        self.token = token
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def _same_server(self, url: str) -> bool:
        a, b = urlsplit(url), urlsplit(self.base)
        return (a.scheme, a.netloc) == (b.scheme, b.netloc)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        stream: bool = False,
        accept: str | None = None,
    ) -> requests.Response:
        """``path`` is under the server (``/api/v1/...``) or a full URL the server gave. The token only
        ever goes to the server itself: a presigned S3 link is fetched without it."""
        url = path if path.startswith(("http://", "https://")) else self.base + path
        shown = urlsplit(url).path
        headers = {"Accept": accept} if accept else {}
        try:
            if self._same_server(url):
                r = self.session.request(
                    method,
                    url,
                    json=json,
                    params=params,
                    stream=stream,
                    timeout=self.timeout_s,
                    headers=headers,
                )
            else:
                r = requests.request(method, url, stream=stream, timeout=self.timeout_s)
        except requests.exceptions.InvalidURL as e:
            raise CliError(f"bad server URL {self.base!r}: {clean(str(e))}", EXIT_USAGE) from e
        except requests.exceptions.Timeout as e:
            raise CliError(f"{method} {shown}: no answer from {self.base} in {self.timeout_s:.0f} s") from e
        except requests.exceptions.ConnectionError as e:
            raise CliError(f"cannot reach the server at {self.base} ({method} {shown})") from e
        except requests.exceptions.RequestException as e:
            raise CliError(f"{method} {shown} failed: {clean(str(e))}") from e
        if r.status_code >= 400:
            raise http_error(method, shown, r)
        return r

    def upload(self, path: str, file: Path, fields: dict[str, str], timeout_s: float = 3600) -> Any:
        """POST a multipart form with ``file`` in the field ``file``, streamed from disk with a
        Content-Length (never the whole file in memory)."""
        body = MultipartFile(file, fields)
        headers = {"Content-Type": body.content_type, "Content-Length": str(len(body))}
        try:
            r = self.session.post(self.base + path, data=body, headers=headers, timeout=timeout_s)
        except requests.exceptions.Timeout as e:
            raise CliError(f"POST {path}: no answer from {self.base} in {timeout_s:.0f} s") from e
        except requests.exceptions.ConnectionError as e:
            raise CliError(f"cannot reach the server at {self.base} (POST {path})") from e
        except requests.exceptions.RequestException as e:
            raise CliError(f"POST {path} failed: {clean(str(e))}") from e
        if r.status_code >= 400:
            raise http_error("POST", path, r)
        return _json(r, path)

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return _json(self.request("GET", path, params=params), path)

    def post(self, path: str, body: Any = None) -> Any:
        return _json(self.request("POST", path, json=body if body is not None else {}), path)

    def pages(self, path: str, limit: int, params: dict[str, Any] | None = None) -> Iterator[Any]:
        """The items of a paginated list (``{next, results}``), following ``next``; at most ``limit``."""
        got = 0
        page: Any = self.get(path, {**(params or {}), "limit": min(max(limit, 1), 500)})
        while True:
            items = page.get("results", []) if isinstance(page, dict) else page
            for item in items:
                if got >= limit:
                    return
                got += 1
                yield item
            nxt = page.get("next") if isinstance(page, dict) else None
            if not nxt or got >= limit:
                return
            page = self.get(nxt)


def _json(r: requests.Response, path: str) -> Any:
    if not r.content:
        return None
    try:
        return r.json()
    except ValueError as e:
        raise CliError(
            f"{urlsplit(path).path}: the server answered HTTP {r.status_code} without JSON "
            "(is --url the API's server?)",
            EXIT_API,
        ) from e


class MultipartFile:
    """A multipart/form-data body read from disk as it is sent: fields, then one file."""

    CHUNK = 1024 * 1024

    def __init__(self, file: Path, fields: dict[str, str]) -> None:
        boundary = uuid.uuid4().hex
        self.content_type = f"multipart/form-data; boundary={boundary}"
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode()
            + v.encode()
            + b"\r\n"
            for k, v in fields.items()
        )
        name = file.name.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._parts: list[bytes | Path] = [head, file, f"\r\n--{boundary}--\r\n".encode()]
        self._length = len(head) + os.path.getsize(file) + len(self._parts[2])  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
                continue
            with open(part, "rb") as handle:
                yield from iter(lambda: handle.read(self.CHUNK), b"")
