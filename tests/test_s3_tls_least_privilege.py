"""A remote host's S3 over HTTPS with least privilege (docs/operations.md, "S3 over HTTPS").

A SeaweedFS of the test's own serves S3 over HTTPS only, with a CA and a server certificate for
127.0.0.1 made here (tests/tls_pki.py), and two identities in its ``-s3.config``: the admin
(setup) and the host, whose actions are the ones docs/operations.md gives for SeaweedFS: read and
list the datasets bucket, read and write under the artifact prefix, nothing else.

The host side is built the way a host worker builds it, from its environment
(:func:`worker.config.load`): the node cache syncs and seals a dataset version, the artifact
store publishes under the prefix and reads it back, with ``AWS_CA_BUNDLE`` naming the test's
CA. A write to the datasets bucket and one outside the prefix reach the server (the host's own
allow-list is widened for that) and are refused there, with a message that says what to fix;
without the CA the sync fails naming the certificate problem.

Fails (never skips) when SeaweedFS or openssl cannot start.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from s3_fixtures import REGION, S3Tls, SeaweedS3, make_dataset
from tls_pki import Pki, make_pki

from worker import config as host_config
from worker.contract import DatasetRef
from worker.errors import HostError
from worker.nodecache import MARKER, NodeCache
from worker.storage import S3Store, artifacts_from_config

pytestmark = pytest.mark.timeout(120)

DATASETS = "datasets-bucket"
ARTIFACTS = "artifacts-bucket"
PREFIX = "hb/runs/"  # the host's artifact prefix: s3://artifacts-bucket/hb/runs/
HOST_KEY = "hb-host-pod1"
HOST_SECRET = "hb-host-pod1-secret"
MIB5 = 5 * 1024 * 1024  # S3's smallest multipart part
# The host's identity, as docs/operations.md gives it. SeaweedFS matches "Action:bucket" on the
# whole bucket, and "Action:bucket/prefix*" (a trailing star) on the keys under a prefix.
HOST_IDENTITY: dict[str, Any] = {
    "name": "hb-host-pod1",
    "credentials": [{"accessKey": HOST_KEY, "secretKey": HOST_SECRET}],
    "actions": [
        f"Read:{DATASETS}",
        f"List:{DATASETS}",
        f"Read:{ARTIFACTS}/{PREFIX}*",
        f"Write:{ARTIFACTS}/{PREFIX}*",
    ],
}


@dataclass
class TlsS3:
    server: SeaweedS3
    pki: Pki
    ref: DatasetRef


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsS3]:
    pki = make_pki(tmp_path_factory.mktemp("s3pki"))
    server = SeaweedS3(
        tmp_path_factory.mktemp("s3tls"),
        identities=[HOST_IDENTITY],
        tls=S3Tls(cert=pki.server_cert, key=pki.server_key, ca=pki.ca),
    )
    try:
        server.start(timeout_s=30)
    except Exception as e:  # noqa: BLE001 - reported as a failure with the reason
        pytest.fail(f"SeaweedFS with HTTPS on its S3 port could not start: {e}")
    try:
        admin = server.client()
        admin.create_bucket(Bucket=ARTIFACTS)
        ref = make_dataset(admin, DATASETS, "docs/v1/", count=24)
        yield TlsS3(server, pki, ref)
    finally:
        server.stop()


def _host_env(monkeypatch: pytest.MonkeyPatch, tmp: Path, s3: TlsS3, *, ca: Path | None, roots: str) -> None:
    """The host worker's environment (docs/operations.md): its own keys, https, the CA bundle."""
    env = {
        "HYPERBENCH_VAR_DIR": str(tmp / "var"),
        "HYPERBENCH_S3_ENDPOINT_URL": s3.server.endpoint,
        "HYPERBENCH_S3_REGION": REGION,
        "HYPERBENCH_S3_BUCKETS": DATASETS,
        "HYPERBENCH_S3_MAX_ATTEMPTS": "2",
        "HYPERBENCH_ARTIFACTS_S3_ROOTS": roots,
        "AWS_ACCESS_KEY_ID": HOST_KEY,
        "AWS_SECRET_ACCESS_KEY": HOST_SECRET,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    if ca is None:
        monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    else:
        monkeypatch.setenv("AWS_CA_BUNDLE", str(ca))


def test_the_host_syncs_a_dataset_over_https_and_publishes_under_its_prefix(
    tls_s3: TlsS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tls_s3.server.endpoint.startswith("https://")
    _host_env(monkeypatch, tmp_path, tls_s3, ca=tls_s3.pki.ca, roots=f"s3://{ARTIFACTS}/{PREFIX}")
    cfg = host_config.load()

    result = NodeCache.from_config(cfg).sync(tls_s3.ref)
    assert result.fetched_files == 24
    assert (result.path / MARKER).is_file(), "the version is sealed"
    assert json.loads((result.path / "dataset.json").read_text())["name"] == "docs"

    artifacts = artifacts_from_config(cfg)
    local = tmp_path / "predictions.jsonl"
    local.write_text('{"id": "doc-0", "text": "text 0"}\n')
    uri = f"s3://{ARTIFACTS}/{PREFIX}run-1/shard-0/predictions.jsonl"
    assert not artifacts.exists(uri), "a missing artifact is missing (404), not refused (403)"
    assert artifacts.put_file(local, uri) == uri
    assert artifacts.exists(uri)
    back = artifacts.get_file(uri, tmp_path / "back" / "predictions.jsonl")
    assert back.read_bytes() == local.read_bytes()

    # What docs/operations.md says SeaweedFS cannot split off: its Write covers DeleteObject too
    # (under the prefix only). The host's code never calls it.
    host = boto3.client(
        "s3",
        endpoint_url=tls_s3.server.endpoint,
        aws_access_key_id=HOST_KEY,
        aws_secret_access_key=HOST_SECRET,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    host.delete_object(Bucket=ARTIFACTS, Key=uri.removeprefix(f"s3://{ARTIFACTS}/"))
    assert not artifacts.exists(uri)
    with pytest.raises(ClientError, match="AccessDenied"):
        host.delete_object(Bucket=DATASETS, Key="docs/v1/manifest.jsonl")


@pytest.mark.parametrize(
    ("target", "multipart"),
    [
        pytest.param(f"s3://{DATASETS}/docs/v1/manifest.jsonl", False, id="the datasets bucket"),
        pytest.param(f"s3://{ARTIFACTS}/elsewhere/run-1/report.html", False, id="outside the prefix"),
        pytest.param(f"s3://{ARTIFACTS}/hb/runsX/big.bin", True, id="a multipart upload beside it"),
    ],
)
def test_a_write_the_host_may_not_make_is_refused_by_the_server_with_a_message_to_act_on(
    tls_s3: TlsS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str, multipart: bool
) -> None:
    # A host whose own allow-list is too wide: only the server's policy stands in the way.
    wide = f"s3://{DATASETS}/,s3://{ARTIFACTS}/"
    _host_env(monkeypatch, tmp_path, tls_s3, ca=tls_s3.pki.ca, roots=wide)
    artifacts = artifacts_from_config(host_config.load())
    assert artifacts.s3 is not None
    store = artifacts.s3
    if multipart:  # CreateMultipartUpload is refused as PutObject is
        store = S3Store(replace(store.settings, multipart_threshold_bytes=MIB5, multipart_chunk_bytes=MIB5))
    local = tmp_path / "blob"
    local.write_bytes(b"x" * (MIB5 + 1 if multipart else 64))
    before = _object(tls_s3, target)

    with pytest.raises(HostError) as refused:
        store.put_file(local, target)
    message = str(refused.value)
    assert message.startswith(f"Could not upload {target}: S3 refused it to this host's keys (AccessDenied")
    assert f"AWS_ACCESS_KEY_ID={HOST_KEY}" in message, "names the keys the policy refused"
    assert f"HYPERBENCH_ARTIFACTS_S3_ROOTS ({wide.replace(',', ', ')})" in message, "and the setting"
    assert "docs/operations.md" in message
    assert "An error occurred" not in message, "no raw botocore dump"
    assert refused.value.permanent, "another attempt would be refused again"
    assert _object(tls_s3, target) == before, "nothing was written"


def test_without_the_ca_the_host_fails_naming_the_certificate_problem(
    tls_s3: TlsS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_env(monkeypatch, tmp_path, tls_s3, ca=None, roots=f"s3://{ARTIFACTS}/{PREFIX}")
    cfg = host_config.load()
    endpoint = tls_s3.server.endpoint
    with pytest.raises(HostError) as failed:
        NodeCache.from_config(cfg).sync(tls_s3.ref)
    message = str(failed.value)
    assert message.startswith(f"Could not read the manifest over HTTPS: this host does not trust the TLS "
                              f"certificate of {endpoint}: it is not signed by a CA this host trusts "
                              "(UnknownIssuer).")  # fmt: skip
    assert "set AWS_CA_BUNDLE on the host worker" in message
    assert failed.value.permanent, "another attempt meets the same certificate"
    assert not list(cfg.cache_dir.rglob(MARKER)), "nothing was sealed"

    # The artifact store (boto3, OpenSSL) says the same.
    local = tmp_path / "log.txt"
    local.write_text("a line\n")
    with pytest.raises(HostError) as refused:
        artifacts_from_config(cfg).put_file(local, f"s3://{ARTIFACTS}/{PREFIX}run-2/log.txt")
    message = str(refused.value)
    assert f"this host does not trust the TLS certificate of {endpoint}: it is not signed by a CA" in message
    assert "set AWS_CA_BUNDLE on the host worker" in message
    assert refused.value.permanent


def _object(s3: TlsS3, uri: str) -> bytes | None:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    admin = s3.server.client()
    try:
        return bytes(admin.get_object(Bucket=bucket, Key=key)["Body"].read())
    except admin.exceptions.NoSuchKey:
        return None
