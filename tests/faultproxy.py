"""A counting, fault-injecting HTTP/1.1 proxy on loopback, for S3 tests and the sync benchmark.

It sits between an S3 client and the S3 server, relays requests one at a time per
connection (keep-alive supported), counts requests per ``(method, path)`` and the
response bytes it relays, and injects faults chosen by :class:`Rule` s: a 503
SlowDown, a connection reset, a stall mid-body, a truncated body, a flipped byte.
It runs its own event loop in a daemon thread, so a test reads its counters directly.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

FaultKind = Literal["503", "reset", "stall", "truncate", "corrupt", "slow"]

_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclass
class Rule:
    """Inject ``kind`` into GETs whose path contains ``match``, ``times`` times (-1: always)."""

    kind: FaultKind
    match: str = ""
    times: int = 1
    stall_s: float = 30.0
    delay_per_chunk_s: float = 0.05  # for "slow"
    method: str = "GET"
    hits: int = field(default=0, init=False)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.rules: list[Rule] = []
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.bytes_out = 0
        self.connections = 0
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="faultproxy")
        self._conns: set[asyncio.Task[None]] = set()

    # -- control (from the test's thread)

    def start(self) -> FaultProxy:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        fut.result(timeout=10)
        return self

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.rules = []
            self.counts.clear()
            self.bytes_out = 0
            self.connections = 0

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def gets(self, contains: str = "") -> dict[str, int]:
        """GET counts by path, for paths containing ``contains``."""
        with self._lock:
            return {p: n for (m, p), n in self.counts.items() if m == "GET" and contains in p}

    # -- the loop

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, backlog=512)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)

    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.counts[(method, path)] += 1
            for r in self.rules:
                if r.method == method and r.match in path and (r.times < 0 or r.hits < r.times):
                    r.hits += 1
                    return r
        return None

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        with self._lock:
            self.connections += 1
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                try:
                    head = await creader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                method, target = head.split(b" ", 2)[:2]
                path = target.decode("latin-1").split("?", 1)[0]
                headers = _headers(head)
                body = b""
                if int(headers.get("content-length", "0")):
                    body = await creader.readexactly(int(headers["content-length"]))
                rule = self._pick(method.decode(), path)
                if rule is not None and rule.kind == "503":
                    cwriter.write(
                        b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n"
                        + f"Content-Length: {len(_SLOWDOWN)}\r\n\r\n".encode()
                        + _SLOWDOWN
                    )
                    await cwriter.drain()
                    continue
                if rule is not None and rule.kind == "reset":
                    _reset(cwriter)
                    return
                if upstream is None:
                    upstream = await asyncio.open_connection(*self.upstream)
                ureader, uwriter = upstream
                uwriter.write(head + body)
                await uwriter.drain()
                keep = await self._relay(method, ureader, cwriter, rule)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            if upstream is not None:
                upstream[1].close()
            cwriter.close()
            self._conns.discard(task)

    async def _relay(
        self, method: bytes, ureader: asyncio.StreamReader, cwriter: asyncio.StreamWriter, rule: Rule | None
    ) -> bool:
        """Relay one response; False when the connection must end."""
        rhead = await ureader.readuntil(b"\r\n\r\n")
        status = int(rhead.split(b" ", 2)[1])
        headers = _headers(rhead)
        cwriter.write(rhead)
        self._count(len(rhead))
        if method == b"HEAD" or status in (204, 304):
            await cwriter.drain()
            return True
        if "content-length" in headers:
            if not await self._relay_sized(ureader, cwriter, int(headers["content-length"]), status, rule):
                return False
            return headers.get("connection", "").lower() != "close"
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await self._relay_chunked(ureader, cwriter)
            return True
        # No framing: the body runs to the end of the connection.
        while chunk := await ureader.read(65536):
            cwriter.write(chunk)
            self._count(len(chunk))
        await cwriter.drain()
        return False

    async def _relay_sized(
        self,
        ureader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        remaining: int,
        status: int,
        rule: Rule | None,
    ) -> bool:
        """Relay a body of ``remaining`` bytes, injecting ``rule``'s fault; False when it was cut short."""
        half = remaining // 2
        sent = 0
        flipped = False
        while remaining:
            chunk = await ureader.read(min(65536, remaining))
            if not chunk:
                return False
            remaining -= len(chunk)
            if rule is not None and status in (200, 206):
                if rule.kind in ("stall", "truncate") and sent + len(chunk) > half:
                    await self._cut_at_half(cwriter, chunk[: max(0, half - sent)], rule)
                    return False
                if rule.kind == "corrupt" and not flipped and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    flipped = True
                if rule.kind == "slow":
                    await asyncio.sleep(rule.delay_per_chunk_s)
            cwriter.write(chunk)
            sent += len(chunk)
            self._count(len(chunk))
            await cwriter.drain()
        return True

    async def _cut_at_half(self, cwriter: asyncio.StreamWriter, cut: bytes, rule: Rule) -> None:
        """Send the body up to its half, stall there for a "stall" rule, then reset the connection."""
        cwriter.write(cut)
        self._count(len(cut))
        await cwriter.drain()
        if rule.kind == "stall":
            await asyncio.sleep(rule.stall_s)
        _reset(cwriter)

    async def _relay_chunked(self, ureader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        """Relay a chunked body up to and including its last (empty) chunk."""
        while True:
            line = await ureader.readuntil(b"\r\n")
            size = int(line.split(b";")[0], 16)
            data = await ureader.readexactly(size + 2)
            cwriter.write(line + data)
            self._count(len(line) + len(data))
            if size == 0:
                await cwriter.drain()
                return

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_out += n


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            out[k.decode("latin-1").strip().lower()] = v.decode("latin-1").strip()
    return out


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
