"""The artifact store against a real S3 server (SeaweedFS on loopback) and a real directory.

Faults are injected by the counting proxy of tests/faultproxy.py, between the
boto3 client and the server: 503 SlowDown, connection resets, truncated bodies.
The web side's links are fetched over HTTP with requests, as a browser would.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from faultproxy import FaultProxy, Rule
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, scratch_bucket

from apps.catalog.models import Dataset, ModelImage
from apps.runs import artifacts as web_artifacts
from apps.runs.models import Experiment, Run, RunShard
from tests.conftest import streamed
from worker import contract
from worker.errors import HostError
from worker.storage import Artifacts, FileStore, S3Store, S3StoreSettings


def _settings(endpoint: str, roots: tuple[str, ...], **kw: Any) -> S3StoreSettings:
    return S3StoreSettings(
        roots=roots,
        endpoint_url=endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        **{"max_attempts": 4, "connect_timeout_s": 3.0, "read_timeout_s": 5.0, **kw},
    )


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[str]:
    with scratch_bucket(s3_server, "hb-art") as name:
        yield name


def _keys(s3_server: SeaweedS3, bucket: str) -> list[str]:
    resp = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def _puts(proxy: FaultProxy, contains: str) -> int:
    return sum(n for (m, p), n in proxy.counts.items() if m == "PUT" and contains in p)


def _blob(tmp_path: Path, name: str, size: int, seed: str = "x") -> Path:
    data = (hashlib.sha256(seed.encode()).digest() * (size // 32 + 1))[:size]
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- s3:// on the host side ----------------------------------------------------------------------


def test_an_s3_store_puts_gets_lists_and_looks_up_artifacts_under_its_root(
    s3_server: SeaweedS3, bucket: str, tmp_path: Path
) -> None:
    store = S3Store(_settings(s3_server.endpoint, (f"s3://{bucket}/hb/",)))
    base = f"s3://{bucket}/hb/runs/7/"
    src = _blob(tmp_path, "predictions.jsonl", 70_000)
    uri = base + contract.shard_predictions_key(0, 1)

    assert not store.exists(uri)
    assert store.put_file(src, uri) == uri

    assert store.exists(uri)
    back = store.get_file(uri, tmp_path / "back" / "p.jsonl")
    assert back.read_bytes() == src.read_bytes()
    assert not list((tmp_path / "back").glob("*.part"))
    store.put_file(src, base + contract.log_key("infer", 1, 0))
    assert store.list(base) == [base + "logs/infer/shard-0/attempt-1.log", uri]
    head = s3_server.client().head_object(
        Bucket=bucket, Key=f"hb/runs/7/{contract.shard_predictions_key(0, 1)}"
    )
    assert head["ContentType"] == "application/x-ndjson"


@pytest.mark.parametrize(
    "uri",
    [
        "s3://{other}/hb/runs/1/x.json",  # another bucket
        "s3://{bucket}/hbx/runs/1/x.json",  # a sibling prefix that merely starts alike
        "s3://{bucket}/other/x.json",
        "s3://{bucket}/hb/../other/x.json",
        "s3://{bucket}/hb/runs//x.json",
        "s3://{bucket}/hb/runs/1/x.json?versionId=1",
        "file:///etc/passwd",
        "http://169.254.169.254/latest/meta-data/",
    ],
)
def test_an_s3_store_refuses_uris_outside_its_roots_and_writes_nothing(
    s3_server: SeaweedS3, bucket: str, tmp_path: Path, uri: str
) -> None:
    store = Artifacts(
        FileStore([tmp_path / "artifacts"]), S3Store(_settings(s3_server.endpoint, (f"s3://{bucket}/hb/",)))
    )
    src = _blob(tmp_path, "x.json", 100)
    target = uri.format(bucket=bucket, other=bucket + "-other")

    with pytest.raises(HostError) as e:
        store.put_file(src, target)

    assert e.value.permanent
    assert _keys(s3_server, bucket) == []


def test_an_s3_uri_on_a_host_without_s3_roots_is_refused_with_the_setting_to_change(tmp_path: Path) -> None:
    store = Artifacts(FileStore([tmp_path]))
    with pytest.raises(HostError, match="HYPERBENCH_ARTIFACTS_S3_ROOTS"):
        store.exists("s3://hb/runs/1/metrics.json")


def test_a_put_is_retried_through_503s_and_a_reset_and_lands_once_complete(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    store = S3Store(_settings(s3_proxy.url, (f"s3://{bucket}/",)))
    src = _blob(tmp_path, "metrics.json", 20_000)
    s3_proxy.add(Rule("503", match="metrics.json", times=2, method="PUT"))
    s3_proxy.add(Rule("reset", match="metrics.json", times=1, method="PUT"))

    store.put_file(src, f"s3://{bucket}/runs/1/metrics.json")

    assert _puts(s3_proxy, "metrics.json") == 4  # 2 x 503, 1 reset, 1 stored
    body = s3_server.client().get_object(Bucket=bucket, Key="runs/1/metrics.json")["Body"].read()
    assert body == src.read_bytes()


def test_a_get_is_retried_after_a_reset_and_a_truncated_body(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    src = _blob(tmp_path, "per_sample.jsonl", 300_000)
    s3_server.client().upload_file(str(src), bucket, "runs/2/per_sample.jsonl")
    store = S3Store(_settings(s3_proxy.url, (f"s3://{bucket}/runs/",)))
    s3_proxy.add(Rule("reset", match="per_sample.jsonl", times=1))
    s3_proxy.add(Rule("truncate", match="per_sample.jsonl", times=1))

    out = store.get_file(f"s3://{bucket}/runs/2/per_sample.jsonl", tmp_path / "out" / "per_sample.jsonl")

    assert out.read_bytes() == src.read_bytes()
    assert sum(s3_proxy.gets("per_sample.jsonl").values()) >= 3
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["per_sample.jsonl"]


def test_when_retries_run_out_a_put_fails_as_transient_and_leaves_no_object(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    store = S3Store(_settings(s3_proxy.url, (f"s3://{bucket}/",), max_attempts=3))
    s3_proxy.add(Rule("503", match="report.html", times=-1, method="PUT"))

    with pytest.raises(HostError) as e:
        store.put_file(_blob(tmp_path, "report.html", 1000), f"s3://{bucket}/runs/3/report.html")

    assert not e.value.permanent  # the task retries it later, a bounded number of times
    assert _puts(s3_proxy, "report.html") == 3
    assert _keys(s3_server, bucket) == []


def test_a_multipart_upload_survives_a_failed_part_and_one_that_keeps_failing_leaves_nothing(
    s3_server: SeaweedS3, s3_proxy: FaultProxy, bucket: str, tmp_path: Path
) -> None:
    mib = 1024 * 1024
    settings = _settings(
        s3_proxy.url,
        (f"s3://{bucket}/",),
        max_attempts=3,
        multipart_threshold_bytes=5 * mib,
        multipart_chunk_bytes=5 * mib,
    )
    store = S3Store(settings)
    big = _blob(tmp_path, "predictions.jsonl", 12 * mib)
    s3_proxy.add(Rule("503", match="ok/predictions.jsonl", times=1, method="PUT"))

    store.put_file(big, f"s3://{bucket}/ok/predictions.jsonl")

    got = s3_server.client().get_object(Bucket=bucket, Key="ok/predictions.jsonl")["Body"].read()
    assert got == big.read_bytes()
    assert _puts(s3_proxy, "ok/predictions.jsonl") == 4  # 3 parts + the retried one

    s3_proxy.add(Rule("503", match="bad/predictions.jsonl", times=-1, method="PUT"))
    with pytest.raises(HostError):
        store.put_file(big, f"s3://{bucket}/bad/predictions.jsonl")

    assert _keys(s3_server, bucket) == ["ok/predictions.jsonl"]
    # s3transfer aborted the upload it had begun: no parts left behind to pay for.
    assert s3_server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_wrong_keys_are_a_permanent_error_that_names_the_setting(
    s3_server: SeaweedS3, bucket: str, tmp_path: Path
) -> None:
    wrong = S3StoreSettings(
        roots=(f"s3://{bucket}/",),
        endpoint_url=s3_server.endpoint,
        region=REGION,
        access_key_id=ACCESS_KEY,
        secret_access_key="not-the-secret",
        max_attempts=3,
    )

    with pytest.raises(HostError) as e:
        S3Store(wrong).put_file(_blob(tmp_path, "m.json", 10), f"s3://{bucket}/runs/1/m.json")

    assert e.value.permanent, e.value
    assert "AWS_SECRET_ACCESS_KEY" in str(e.value), e.value
    assert _keys(s3_server, bucket) == []


@pytest.mark.parametrize("scheme", ["file", "s3"])
def test_a_reader_sees_a_whole_artifact_or_the_previous_one_never_a_mix(
    scheme: str, s3_server: SeaweedS3, bucket: str, tmp_path: Path
) -> None:
    """Publishing over an existing key while another process reads it: every read is one whole version."""
    root = tmp_path / "artifacts"
    store = Artifacts(FileStore([root]), S3Store(_settings(s3_server.endpoint, (f"s3://{bucket}/",))))
    base = root.as_uri() + "/" if scheme == "file" else f"s3://{bucket}/"
    uri = base + "runs/9/predictions.jsonl"
    versions = [_blob(tmp_path, f"v{i}.jsonl", 2 * 1024 * 1024, seed=str(i)) for i in range(2)]
    digests = {hashlib.sha256(v.read_bytes()).hexdigest() for v in versions}
    store.put_file(versions[0], uri)
    stop = threading.Event()
    seen: list[str] = []

    def read() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            out = store.get_file(uri, tmp_path / "reads" / f"{n}.jsonl")
            seen.append(hashlib.sha256(out.read_bytes()).hexdigest())
            out.unlink()

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(12):
            store.put_file(versions[i % 2], uri)
    finally:
        stop.set()
        reader.join(timeout=60)

    assert seen
    assert set(seen) <= digests
    if scheme == "file":
        assert not [p for p in (root / "runs" / "9").iterdir() if p.name.endswith(".part")]


# --- file:// ---------------------------------------------------------------------------------------


def test_a_file_store_refuses_paths_outside_its_roots_even_through_a_symlink(tmp_path: Path) -> None:
    root, outside = tmp_path / "artifacts", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "runs").symlink_to(outside, target_is_directory=True)
    store = FileStore([root])
    src = _blob(tmp_path, "m.json", 10)

    for uri in (
        (root / "runs" / "1" / "m.json").as_uri(),  # through the symlink
        (root / ".." / "elsewhere" / "m.json").as_uri(),
        "file://other-host" + str(root / "m.json"),
    ):
        with pytest.raises(HostError):
            store.put_file(src, uri)

    assert list(outside.iterdir()) == []
    store.put_file(src, (root / "ok" / "m.json").as_uri())
    assert (root / "ok" / "m.json").read_bytes() == src.read_bytes()
    assert [p.name for p in (root / "ok").iterdir()] == ["m.json"]  # no .part left behind


# --- the web side: links and streams -----------------------------------------------------------------


@pytest.fixture
def web_s3(settings: Any, s3_server: SeaweedS3, bucket: str) -> str:
    """The web side configured for s3:// artifacts in the test bucket; returns the artifacts URI."""
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_server.endpoint
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_SESSION_TOKEN = ""
    settings.HYPERBENCH_ARTIFACTS_S3_ROOTS = []
    settings.HYPERBENCH_ARTIFACTS_URL_TTL_S = 120
    settings.HYPERBENCH_ARTIFACTS_URI = f"s3://{bucket}/hb/"
    return str(settings.HYPERBENCH_ARTIFACTS_URI)


def _succeeded_run(owner: User, base: str, shards: int = 1) -> Run:
    dataset = Dataset.objects.create(
        name=f"docs-{uuid.uuid4().hex[:6]}",
        version="1",
        task="ocr",
        source_uri="file:///nowhere/",
        manifest_sha256="a" * 64,
        sample_count=3,
    )
    model, _ = ModelImage.objects.get_or_create(name="echo", defaults={"image": "hyperbench/testkit:1"})
    exp = Experiment.objects.create(name="echo", model=model, dataset=dataset, owner=owner)
    run = Run.objects.create(experiment=exp, spec={}, state=Run.State.SUCCEEDED, manifest_sha256="a" * 64)
    prefix = f"{base.rstrip('/')}/runs/{run.pk}/"
    run.spec = {"artifacts_uri": prefix, "shards": shards}
    for name, key in contract.RUN_ARTIFACTS.items():
        setattr(run, f"{name}_uri", prefix + key)
    run.save()
    for k in range(shards):
        RunShard.objects.create(
            run=run,
            index=k,
            attempt=2,
            state="succeeded",
            predictions_uri=prefix + contract.shard_predictions_key(k, 2),
        )
    return run


def _publish_all(run: Run, store: Artifacts, tmp_path: Path) -> dict[str, bytes]:
    """Every artifact of a finished 1-shard run whose shard succeeded at attempt 2, with distinct bytes."""
    prefix = run.spec["artifacts_uri"]
    keys = {
        **{name: key for name, key in contract.RUN_ARTIFACTS.items()},
        "shards/0/predictions": contract.shard_predictions_key(0, 2),
        "logs/infer/shard-0/attempt-1.log": contract.log_key("infer", 1, 0),
        "logs/infer/shard-0/attempt-2.log": contract.log_key("infer", 2, 0),
        "logs/evaluate/attempt-1.log": contract.log_key("evaluate", 1),
        "logs/report/attempt-1.log": contract.log_key("report", 1),
    }
    out = {}
    for name, key in keys.items():
        data = f"{name} of run {run.pk}\n".encode() * 50
        local = tmp_path / "publish" / key
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        store.put_file(local, prefix + key)
        out[name] = data
    # An attempt the control side did not accept is not offered as the shard's predictions.
    local = tmp_path / "publish" / "stale.jsonl"
    local.write_bytes(b"attempt 1\n")
    store.put_file(local, prefix + contract.shard_predictions_key(0, 1))
    return out


def test_the_api_links_every_s3_artifact_of_a_run_with_a_presigned_url_that_downloads_it(
    web_s3: str, s3_server: SeaweedS3, bucket: str, alice: User, as_alice: APIClient, tmp_path: Path
) -> None:
    run = _succeeded_run(alice, web_s3)
    store = Artifacts(FileStore([tmp_path]), S3Store(_settings(s3_server.endpoint, (web_s3,))))
    published = _publish_all(run, store, tmp_path)

    r = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/")

    assert r.status_code == 200, r.content
    body = r.json()
    assert body["run"] == run.pk
    assert body["expires_in"] == 120
    links = body["artifacts"]
    assert set(links) == set(published)
    for name, url in links.items():
        assert "X-Amz-Signature=" in url
        assert "X-Amz-Expires=120" in url
        got = requests.get(url, timeout=10)
        assert got.status_code == 200, (name, got.text[:300])
        assert got.content == published[name], name
    assert requests.get(links["report"], timeout=10).headers["Content-Type"].startswith("text/html")
    # Tampering with a signed URL gets nothing.
    assert (
        requests.get(links["metrics"].replace("metrics.json", "report.html"), timeout=10).status_code == 403
    )
    # The run's own pages point there too: a redirect per artifact, and the report streamed.
    one = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/logs/infer/shard-0/attempt-2.log/")
    assert one.status_code == 302
    assert requests.get(one["Location"], timeout=10).content == published["logs/infer/shard-0/attempt-2.log"]
    report = as_alice.get(f"/api/v1/runs/{run.pk}/report/")
    assert report.status_code == 200
    assert streamed(report) == published["report"]
    # What a model wrote reaches the viewer's browser sandboxed: no cookies, no script, no fetch.
    assert report["Content-Security-Policy"].startswith("sandbox;")
    assert "script-src" not in report["Content-Security-Policy"]
    assert report["X-Content-Type-Options"] == "nosniff"
    assert (
        as_alice.get(f"/api/v1/runs/{run.pk}/")
        .json()["artifacts_url"]
        .endswith(f"/api/v1/runs/{run.pk}/artifacts/")
    )


def test_a_run_outside_the_configured_store_gets_no_links_and_an_outsider_gets_no_run(
    web_s3: str, alice: User, as_alice: APIClient, as_bob: APIClient, bucket: str
) -> None:
    run = _succeeded_run(alice, f"s3://{bucket}-elsewhere/hb/")

    assert as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/").json()["artifacts"] == {}
    assert as_alice.get(f"/api/v1/runs/{run.pk}/report/").status_code == 404
    assert web_artifacts.locate(f"s3://{bucket}/hb/../secrets/x") is None
    assert web_artifacts.locate(f"s3://{bucket}/hbx/runs/1/report.html") is None
    assert as_bob.get(f"/api/v1/runs/{run.pk}/artifacts/").status_code == 404


def test_file_artifacts_are_served_by_the_api_itself(
    settings: Any, alice: User, as_alice: APIClient, as_bob: APIClient, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    settings.HYPERBENCH_ARTIFACTS_URI = root.as_uri() + "/"
    run = _succeeded_run(alice, settings.HYPERBENCH_ARTIFACTS_URI)
    published = _publish_all(run, Artifacts(FileStore([root])), tmp_path)
    os.symlink("/etc/passwd", root / "runs" / str(run.pk) / "logs" / "infer" / "escape.log")

    links = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/").json()["artifacts"]

    assert set(links) == set(published)  # the symlink out of the store is not offered
    for name, url in links.items():
        assert url.startswith("http://testserver/api/v1/runs/")
        r = as_alice.get(url)
        assert r.status_code == 200, name
        assert streamed(r) == published[name], name
    assert as_bob.get(links["metrics"]).status_code == 404
    assert as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/logs/infer/escape.log/").status_code == 404
    assert as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/../../etc/passwd/").status_code == 404
