"""The transfer engine: concurrent verified GETs into ``.part`` files, with retries.

obstore (Rust ``object_store``: signing, connection pool and HTTP in Rust) under asyncio,
with obstore's own retries off: the retries here count attempts and cover what it
cannot see (a corrupt body). Each object lands as
a ``.part`` that is handed back only when its size and checksum are right: sha256
when the manifest declares one, else the size and the MD5 ETag of a single-part
object. Transient failures (5xx, 429, SlowDown, resets, stalls, a corrupt transfer)
are retried with full-jitter backoff, a bounded number of times; then a HostError.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import functools
import hashlib
import itertools
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from worker.errors import HostError
from worker.nodecache.layout import Paths, disk_full
from worker.nodecache.reuse import Reuse
from worker.nodecache.seal import Entry, iter_entries
from worker.nodecache.settings import CHUNK, S3Settings, Selection
from worker.s3 import certificate_problem

logger = logging.getLogger(__name__)

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
_TRANSIENT_CODES = frozenset({"SlowDown", "InternalError", "RequestTimeout", "ServiceUnavailable"})
RANGE_PART = 16 * 1024 * 1024  # objects of two parts or more are fetched as parallel ranges
RANGES_IN_FLIGHT = 8  # per sync: 8 x 16 MB held at most


class Transient(Exception):
    """A failure worth another attempt (5xx, SlowDown, reset, stall, a corrupt transfer)."""


def backoff(s3: S3Settings, attempt: int) -> float:
    # Full jitter: synchronized retries from many workers would hit a throttled server together.
    return random.uniform(0, min(s3.backoff_max_s, s3.backoff_base_s * (2**attempt)))  # noqa: S311


def _error_code(text: str) -> str:
    m = re.search(r"<Code>([^<]{1,64})</Code>", text)
    return m.group(1) if m else ""


def _status(text: str) -> int | None:
    m = re.search(r"\bstatus(?: code)?:? (\d{3})\b", text)
    return int(m.group(1)) if m else None


def _refusal(e: Exception, label: str) -> Exception:
    """What an obstore error means here: Transient when another attempt may succeed, else HostError.

    object_store (with its own retries off) names the HTTP status and S3's error code in its
    message; a reset, a stall (``read_timeout``) or a cut body has neither: transient too.
    """
    from obstore.exceptions import NotFoundError, PermissionDeniedError, UnauthenticatedError

    text = str(e)
    code = _error_code(text)
    status = _status(text)
    problem = certificate_problem(text, _endpoint(text))
    if problem:  # another attempt meets the same certificate
        return HostError(f"Could not read {label} over HTTPS: {problem}")
    if isinstance(e, NotFoundError):
        return HostError(f"{label} does not exist in S3 (HTTP 404); dataset incomplete.")
    if isinstance(e, PermissionDeniedError | UnauthenticatedError):
        return HostError(f"S3 refused {label}: {_brief(text)}; check the host's S3 keys.")
    if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
        return Transient(f"HTTP {status} {code}".strip())
    if status is not None and 400 <= status < 500:
        return HostError(f"S3 refused {label}: HTTP {status} {code}; check the host's S3 keys.")
    return Transient(_brief(text))


def _endpoint(text: str) -> str | None:
    m = re.search(r"\bhttps?://[^/\s]+", text)
    return m.group(0) if m else None


def _brief(text: str) -> str:
    return " ".join(text.split())[:300]


async def _get(store: Any, key: str, label: str, options: Any = None) -> Any:
    """One GET (headers only; the body is read by :func:`_chunks`), its errors mapped."""
    import obstore
    from obstore.exceptions import BaseError

    try:
        return await obstore.get_async(store, key, options=options)
    except BaseError as e:
        raise _refusal(e, label) from e


async def _chunks(resp: Any, label: str, min_chunk: int = CHUNK) -> AsyncIterator[Any]:
    """The body of ``resp`` in chunks (buffers), read errors mapped."""
    from obstore.exceptions import BaseError

    stream = resp.stream(min_chunk_size=min_chunk)
    try:
        async for chunk in stream:
            yield chunk
    except BaseError as e:
        raise _refusal(e, label) from e


async def _read_all(resp: Any, label: str) -> Any:
    """A body in one piece (a buffer): one crossing from Rust instead of a stream's many."""
    from obstore.exceptions import BaseError

    try:
        return await resp.bytes_async()
    except BaseError as e:
        raise _refusal(e, label) from e


async def _whole(resp: Any, label: str) -> AsyncIterator[Any]:
    yield await _read_all(resp, label)


def _etag(resp: Any) -> str:
    return str(resp.meta.get("e_tag") or "").strip('"')


def _check_digest(h: Any, sha: str | None, etag: str) -> None:
    digest = h.hexdigest()
    if sha:
        if digest != sha:
            raise Transient(f"sha256 {digest[:12]} does not match {sha[:12]}")
    elif _MD5_ETAG.match(etag) and digest != etag:
        raise Transient(f"md5 {digest} does not match the ETag {etag}")


def _new_hash(sha: str | None) -> Any:
    return hashlib.sha256() if sha else hashlib.md5(usedforsecurity=False)


def _open_part(part: str) -> int:
    try:
        return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise disk_full(part, e) from e
        raise


@contextlib.contextmanager
def _disk_errors(part: str) -> Any:
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(part, e) from e
        raise


def _pwrite_all(fd: int, data: Any, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _hash_range(path: str, h: Any, start: int, end: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        pos = start
        while pos < end:
            chunk = os.pread(fd, min(CHUNK, end - pos), pos)
            if not chunk:
                raise OSError(errno.EIO, f"{path} is shorter than {end} bytes")
            h.update(chunk)
            pos += len(chunk)
    finally:
        os.close(fd)


class _Ranged:
    """One large object fetched as parallel ranges into one file, hashed in order as parts land."""

    def __init__(self, fetcher: Fetcher, key: str, part: str, size: int, sha: str | None) -> None:
        self.f = fetcher
        self.key, self.part, self.size, self.sha = key, part, size, sha
        self.starts = range(0, size, RANGE_PART)
        self.landed = [False] * len(self.starts)
        self.hashed = 0
        self.h = _new_hash(sha)
        self.etags: set[str] = set()
        self.lock = asyncio.Lock()
        self.fd = -1

    async def hash_ready(self) -> None:
        """Hash the parts that have landed, in order, while later parts still download."""
        loop = asyncio.get_running_loop()
        async with self.lock:
            while self.hashed < len(self.starts) and self.landed[self.hashed]:
                lo = self.starts[self.hashed]
                hi = min(self.size, lo + RANGE_PART)
                await loop.run_in_executor(None, _hash_range, self.part, self.h, lo, hi)
                self.hashed += 1

    async def one(self, index: int, start: int, end: int, label: str) -> None:
        """GET bytes ``[start, end)`` whole (one crossing from Rust) and write them in place."""
        async with self.f.ranges:
            resp = await _get(self.f.store, self.key, label, {"range": (start, end)})
            self.etags.add(_etag(resp))
            data = await _read_all(resp, label)
            if len(data) != end - start:
                raise Transient(f"short ranged body ({len(data)} of {end - start} bytes)")
            await asyncio.get_running_loop().run_in_executor(None, _pwrite_all, self.fd, data, start)
            del data
        self.landed[index] = True
        await self.hash_ready()

    async def run(self, label: str) -> str:
        self.fd = _open_part(self.part)
        try:
            with _disk_errors(self.part):
                results = await asyncio.gather(
                    *(
                        self.one(i, s, min(self.size, s + RANGE_PART), label)
                        for i, s in enumerate(self.starts)
                    ),
                    return_exceptions=True,
                )
                os.fchmod(self.fd, 0o444)
        finally:
            os.close(self.fd)
        _raise_first(results, self.part)
        return await self.verify()

    async def verify(self) -> str:
        if len(self.etags) != 1:
            raise Transient("the object changed during a ranged download (ETags differ)")
        got = os.stat(self.part).st_size
        if got != self.size:
            raise Transient(f"got {got} bytes, the manifest says {self.size}")
        await self.hash_ready()
        if self.hashed != len(self.starts):
            raise Transient("not every part of a ranged download landed")
        _check_digest(self.h, self.sha, self.etags.pop())
        return self.part


def _raise_first(results: list[Any], part: str) -> None:
    """Raise the most telling of the parts' failures: a full disk, then a HostError, then any."""
    errs = [r for r in results if isinstance(r, BaseException)]
    for r in errs:
        if isinstance(r, OSError) and r.errno in (errno.ENOSPC, errno.EDQUOT):
            raise disk_full(part, r) from r
    for r in errs:
        if isinstance(r, HostError):
            raise r
    if errs:
        raise errs[0]


class Fetcher:
    """Verified GETs of ``prefix + rel`` into ``.part`` files under ``staging``."""

    def __init__(self, s3: S3Settings, store: Any, prefix: str, staging: Path, bucket: str = "") -> None:
        self.s3 = s3
        self.store = store
        self.bucket = bucket
        self.prefix = prefix
        self.staging = staging
        self._n = itertools.count(1)  # next() is atomic: parts are also named from threads
        self.fetched_files = 0
        self.fetched_bytes = 0
        self.reused_files = 0
        # ranges in flight, each held whole in memory: RANGE_PART x this bounds it
        self.ranges = asyncio.Semaphore(RANGES_IN_FLIGHT)

    def new_part(self) -> str:
        return str(self.staging / f"{next(self._n)}.part")

    async def fetch(
        self, rel: str, size: int | None, sha256: str | None, *, expect_sha: str | None = None, what: str = ""
    ) -> str:
        """GET ``prefix + rel`` into a verified ``.part``; returns its path."""
        key = self.prefix + rel
        sha = expect_sha or sha256
        label = what or f"s3://{self.bucket}/{key}"
        last = ""
        for attempt in range(self.s3.max_attempts):
            if attempt:
                await asyncio.sleep(backoff(self.s3, attempt))
            part = self.new_part()
            try:
                if size is not None and size >= 2 * RANGE_PART:
                    return await _Ranged(self, key, part, size, sha).run(label)
                return await self._get_once(key, part, size, sha, label)
            except Transient as e:
                last = str(e)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            logger.info("node cache: %s attempt %d failed: %s", label, attempt + 1, last)
        raise HostError(
            f"S3 kept failing for {label} after {self.s3.max_attempts} attempts (last: {last}); "
            "the dataset was not mounted. Check the S3 endpoint's health and retry the run.",
            permanent=False,
        )

    async def _get_once(self, key: str, part: str, size: int | None, sha: str | None, label: str) -> str:
        resp = await _get(self.store, key, label)
        etag = _etag(resp)
        length = int(resp.meta["size"])
        if size is not None and length != size:
            raise HostError(f"{label} has {length} bytes in S3, the manifest says {size}.")
        h = _new_hash(sha)
        body = _whole(resp, label) if length <= CHUNK else _chunks(resp, label)
        got = await _write_stream(part, body, h)
        if got != length:
            raise Transient(f"short body ({got} of {length} bytes)")
        _check_digest(h, sha, etag)
        return part


async def _write_stream(part: str, chunks: AsyncIterator[bytes], h: Any) -> int:
    """Write ``chunks`` to a new read-only ``part``, hashing them on the way; returns the byte count."""
    got = 0
    fd = _open_part(part)
    try:
        with _disk_errors(part):
            async for chunk in chunks:
                h.update(chunk)
                got += len(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o444)
    finally:
        os.close(fd)
    return got


async def _place(fetcher: Fetcher, paths: Paths, e: Entry, in_flight: set[str], progress: Any) -> None:
    """Fetch one entry and rename it into the version dir (unless it is there already)."""
    while e.full in in_flight:  # the same image on two lines: fetch it once
        await asyncio.sleep(0.01)
    if os.path.isfile(e.full) and not os.path.islink(e.full):
        progress.add(os.lstat(e.full).st_size, False)
        return
    in_flight.add(e.full)
    try:
        part = await fetcher.fetch(e.image, e.size, e.sha256)
        n = os.lstat(part).st_size
        paths.ensure_parent(e.full)
        paths.local(e.image)  # re-check after the directories exist
        os.replace(part, e.full)
        fetcher.fetched_files += 1
        fetcher.fetched_bytes += n
        progress.add(n, True)
    finally:
        in_flight.discard(e.full)


async def fetch_all(
    fetcher: Fetcher,
    manifest: Path,
    vdir: Path,
    donor: tuple[Path, int] | None,
    progress: Any,
    select: Selection,
) -> None:
    """Every selected entry of the manifest into ``vdir``: kept, copied from ``donor``, or fetched."""
    paths = Paths(vdir)
    reuse = Reuse(paths, donor, fetcher.new_part)
    conc = max(1, fetcher.s3.concurrency)
    queue: asyncio.Queue[Entry | None] = asyncio.Queue(maxsize=conc * 4)
    in_flight: set[str] = set()
    errors: list[BaseException] = []

    async def worker() -> None:
        while (e := await queue.get()) is not None:
            if errors:
                continue
            try:
                await _place(fetcher, paths, e, in_flight, progress)
            except BaseException as ex:  # noqa: BLE001 - handed to the caller below
                errors.append(ex)

    tasks = [asyncio.create_task(worker()) for _ in range(conc)]
    try:
        for e in iter_entries(manifest, paths):
            if errors:
                break
            if not e.selected(select):
                continue
            # Local work first, in this loop: measured faster here than handing it to
            # threads (2 cores, shared with the S3 server and the downloads).
            done = reuse.local(e) if reuse.wanted(e) else None
            if done is not None:
                fetcher.reused_files += done[0]
                progress.add(done[1], False)
                continue
            await queue.put(e)
    finally:
        for _ in tasks:
            await queue.put(None)
        await asyncio.gather(*tasks, return_exceptions=True)
    if errors:
        raise errors[0]


def store(s3: S3Settings, bucket: str) -> Any:
    """An obstore ``S3Store`` for ``bucket``: one connection pool, its own retries off (ours count)."""
    # A pool is not shared across a fork; a store made with one CA bundle is not reused without it.
    return _store(s3, bucket, os.getpid(), os.environ.get("AWS_CA_BUNDLE", ""))


@functools.lru_cache(maxsize=16)
def _store(s3: S3Settings, bucket: str, _pid: int, ca_bundle: str) -> Any:
    from obstore.store import S3Store

    config: dict[str, Any] = {
        "region": s3.region,
        "access_key_id": s3.access_key_id,
        "secret_access_key": s3.secret_access_key,
        "unsigned_payload": True,
    }
    if s3.session_token:
        config["session_token"] = s3.session_token
    if s3.endpoint_url:  # path style on a custom endpoint (SeaweedFS, MinIO), as boto3 is set up
        config["endpoint"] = s3.endpoint_url.rstrip("/")
        config["virtual_hosted_style_request"] = False
    else:  # AWS: explicit (never AWS_ENDPOINT* from the environment), the bucket in the host name
        config["endpoint"] = f"https://{bucket}.s3.{s3.region}.amazonaws.com"
        config["virtual_hosted_style_request"] = True
    client = {
        "allow_http": bool(s3.endpoint_url and s3.endpoint_url.startswith("http://")),
        "connect_timeout": dt.timedelta(seconds=s3.connect_timeout_s),
        "read_timeout": dt.timedelta(seconds=s3.read_timeout_s),  # a stall
        "pool_idle_timeout": dt.timedelta(seconds=60),
        "http1_only": True,
    }
    # A private CA for the store: the same AWS_CA_BUNDLE boto3 reads, added to the system roots.
    if ca_bundle:
        try:
            client["root_certificate"] = Path(ca_bundle).read_bytes()
        except OSError as e:
            raise HostError(f"AWS_CA_BUNDLE={ca_bundle} cannot be read on this host: {e}") from e
    retry = {"max_retries": 0, "retry_timeout": dt.timedelta(seconds=0)}
    return S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]
