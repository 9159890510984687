"""One dataset version, two sources: a local directory and an S3 prefix with the same manifest.

Registration (a real SeaweedFS): the second source is checked like the first and
joins the version when its manifest hash and sample count are the same; anything
else is a 409 naming both sources and both hashes; the same source again is an
idempotent 200. The host's side: it reads the local directory when that is under
its dataset roots with the registered manifest, and syncs from S3 otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from apps.catalog.models import Dataset, ModelImage
from apps.hosts.models import Host
from apps.runs import dispatch
from apps.runs.models import Experiment, Run
from apps.runs.services import _build_spec
from tests.conftest import load_script
from worker import contract
from worker.config import HostConfig, load
from worker.datasync import choose_source, dataset_lease, local_dataset_dir
from worker.manifest import sha256_file

BUCKET = "hb-sources"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    root.mkdir()
    return root.resolve()


@pytest.fixture
def web(settings: Any, s3_server: SeaweedS3, data_root: Path) -> Path:
    """The web side with one dataset root and S3 on the test's own server."""
    settings.HYPERBENCH_DATASET_ROOTS = [data_root]
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_server.endpoint
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_BUCKETS = [BUCKET]
    return data_root


def _local(root: Path, count: int = 4, seed: int = 3) -> Path:
    out = root / "sample-docs" / "1"
    load_script("make_sample_dataset").write_dataset(out, count, seed)
    return out.resolve()


def _upload(server: SeaweedS3, directory: Path, prefix: str) -> str:
    """Copy a local dataset directory to S3 as is (same manifest); return its s3:// URI."""
    client = server.client()
    with contextlib.suppress(client.exceptions.ClientError):
        client.create_bucket(Bucket=BUCKET)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(directory).as_posix()
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    return f"s3://{BUCKET}/{prefix}"


def _register(client: APIClient, uri: str) -> Any:
    return client.post("/api/v1/datasets/", {"uri": uri}, format="json")


# --- registration -------------------------------------------------------------------------------


def test_local_then_s3_with_the_same_manifest_adds_the_second_source_and_says_so(
    web: Path, s3_server: SeaweedS3, as_alice: APIClient
) -> None:
    ds = _local(web)
    s3_uri = _upload(s3_server, ds, "sample-docs/1/")

    first = _register(as_alice, ds.as_uri() + "/")
    second = _register(as_alice, s3_uri)

    assert first.status_code == 201, first.content
    assert first.json()["outcome"] == "created"
    assert first.json()["s3_uri"] == ""
    assert second.status_code == 200, second.content
    body = second.json()
    assert body["id"] == first.json()["id"]
    assert Dataset.objects.count() == 1
    assert body["outcome"] == "added_source"
    assert body["source_uri"] == ds.as_uri() + "/"
    assert body["s3_uri"] == s3_uri
    message = body["message"]
    assert message.startswith("sample-docs@1 already existed from the local directory sample-docs/1/")
    assert f"added {s3_uri} as its second source" in message
    assert str(web) not in message  # no absolute server path
    row = Dataset.objects.get()
    assert row.sources == [ds.as_uri() + "/", s3_uri]

    # Either source again: nothing changes, and it says so.
    for uri in (s3_uri, ds.as_uri() + "/"):
        again = _register(as_alice, uri)
        assert again.status_code == 200, again.content
        assert again.json()["outcome"] == "already", again.content
        assert "already registered" in again.json()["message"]
        assert str(web) not in again.json()["message"]
    assert Dataset.objects.get().sources == row.sources


def test_s3_then_local_makes_the_local_directory_the_primary_and_keeps_s3(
    web: Path, s3_server: SeaweedS3, as_alice: APIClient
) -> None:
    ds = _local(web)
    s3_uri = _upload(s3_server, ds, "s3-first/1/")

    assert _register(as_alice, s3_uri).status_code == 201
    r = _register(as_alice, ds.as_uri())

    assert r.status_code == 200, r.content
    assert r.json()["outcome"] == "added_source", r.content
    message = r.json()["message"]
    assert message.startswith(f"sample-docs@1 already existed from {s3_uri} with the same manifest")
    assert "added the local directory sample-docs/1/ (under a dataset root) as its second source" in message
    row = Dataset.objects.get()
    assert (row.source_uri, row.s3_uri) == (ds.as_uri() + "/", s3_uri)


def test_s3_with_another_manifest_is_a_409_naming_both_sources_and_hashes(
    web: Path, s3_server: SeaweedS3, as_alice: APIClient
) -> None:
    ds = _local(web)
    other = make_dataset(s3_server.client(), BUCKET, "other/1/", count=5, size=900, name="sample-docs")
    first = _register(as_alice, ds.as_uri() + "/").json()

    r = _register(as_alice, other["uri"])

    assert r.status_code == 409, r.content
    detail = r.json()["detail"]
    assert "sample-docs@1 is already registered from the local directory sample-docs/1/" in detail
    assert first["manifest_sha256"] in detail
    assert other["manifest_sha256"] in detail
    assert other["uri"] in detail
    assert "(4 samples)" in detail
    assert "(5 samples)" in detail
    assert "new version" in detail
    assert str(web) not in detail
    row = Dataset.objects.get()
    assert row.sources == [first["source_uri"]]
    assert row.manifest_sha256 == first["manifest_sha256"]


def test_a_second_source_of_the_same_kind_is_refused(
    web: Path, s3_server: SeaweedS3, as_alice: APIClient
) -> None:
    ds = _local(web)
    one = _upload(s3_server, ds, "one/1/")
    two = _upload(s3_server, ds, "two/1/")
    assert _register(as_alice, one).status_code == 201

    r = _register(as_alice, two)

    assert r.status_code == 409, r.content
    assert "at most one local and one S3 source" in r.json()["detail"]
    assert two in r.json()["detail"]
    assert Dataset.objects.get().sources == [one]


def test_the_same_local_source_twice_is_idempotent(web: Path, as_alice: APIClient) -> None:
    ds = _local(web)
    first = _register(as_alice, ds.as_uri())
    second = _register(as_alice, ds.as_uri() + "/")

    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["outcome"] == "already"
    assert second.json()["message"] == (
        "sample-docs@1 is already registered from the local directory sample-docs/1/ "
        "(under a dataset root); nothing changed."
    )


def test_the_command_and_the_admin_say_what_registration_did(
    web: Path, s3_server: SeaweedS3, db: None
) -> None:
    ds = _local(web)
    s3_uri = _upload(s3_server, ds, "cli/1/")
    call_command("register_dataset", ds.as_uri(), stdout=io.StringIO())

    out = io.StringIO()
    call_command("register_dataset", s3_uri, stdout=out)
    assert "added " + s3_uri + " as its second source" in out.getvalue()

    user = get_user_model().objects.create_superuser("ops", "ops@example.org", "pw-ops-admin")
    admin = Client()
    admin.force_login(user)
    r = admin.post("/admin/catalog/dataset/add/", {"uri": s3_uri}, follow=True)
    assert r.status_code == 200
    assert b"already registered" in r.content
    assert Dataset.objects.count() == 1


# --- the run spec and placement: a version with an S3 source is served by every host -------------


def test_the_run_spec_carries_both_sources(alice: Any) -> None:
    model = ModelImage.objects.create(name="m", image="hyperbench/testkit:x", digest="sha256:" + "a" * 64)
    dataset = Dataset.objects.create(
        name="docs",
        version="1",
        task="ocr",
        source_uri="file:///srv/datasets/docs/1/",
        s3_uri=f"s3://{BUCKET}/docs/1/",
        manifest_sha256="b" * 64,
        sample_count=8,
    )
    exp = Experiment.objects.create(name="e", model=model, dataset=dataset, owner=alice)
    run = Run.objects.create(experiment=exp, spec={}, manifest_sha256="b" * 64, progress_total=8)

    spec = _build_spec(run=run, experiment=exp, shards=1)

    assert spec["dataset"]["uri"] == "file:///srv/datasets/docs/1/"
    assert spec["dataset"].get("s3_uri") == f"s3://{BUCKET}/docs/1/"


def test_placement_sends_a_local_dataset_with_an_s3_source_to_hosts_without_its_directory(
    db: None, tmp_path: Path
) -> None:
    Host.objects.create(name="far", dataset_roots=["/elsewhere"], last_seen=timezone.now())
    spec: dict[str, Any] = {
        "dataset": {"uri": (tmp_path / "sample-docs" / "1").as_uri() + "/", "s3_uri": ""},
        "model": {"requires_gpu": False},
    }
    with pytest.raises(dispatch.Unservable):
        dispatch.placement(spec, [0])

    spec["dataset"]["s3_uri"] = f"s3://{BUCKET}/sample-docs/1/"
    assert dispatch.placement(spec, [0, 1]) == {0: "host.far", 1: "host.far"}


# --- the host's choice of source ----------------------------------------------------------------


def _ref(directory: Path, s3_uri: str = f"s3://{BUCKET}/sample-docs/1/") -> contract.DatasetRef:
    return {
        "name": "sample-docs",
        "version": "1",
        "task": "ocr",
        "uri": directory.as_uri() + "/",
        "s3_uri": s3_uri,
        "manifest_sha256": sha256_file(directory / "manifest.jsonl"),
        "sample_count": 4,
    }


def test_a_host_with_the_directory_under_its_roots_reads_it_in_place(tmp_path: Path) -> None:
    ds = _local(tmp_path / "roots")
    source = choose_source(_ref(ds), [(tmp_path / "roots").resolve()])
    assert not source.s3
    assert source.path == ds
    assert source.ref["uri"] == ds.as_uri() + "/"


def test_a_host_whose_roots_lack_the_directory_picks_s3(tmp_path: Path) -> None:
    ds = _local(tmp_path / "roots")
    ref = _ref(ds)
    source = choose_source(ref, [(tmp_path / "other-roots").resolve()])
    assert source.s3
    assert source.path is None
    assert source.ref["uri"] == ref["s3_uri"]
    assert source.ref["manifest_sha256"] == ref["manifest_sha256"]
    assert "outside this host's dataset roots" in source.reason


def test_a_directory_whose_manifest_differs_is_not_used(tmp_path: Path) -> None:
    ds = _local(tmp_path / "roots")
    ref = _ref(ds)
    with (ds / "manifest.jsonl").open("a") as f:
        f.write("\n")
    source = choose_source(ref, [(tmp_path / "roots").resolve()])
    assert source.s3
    assert "changed since registration" in source.reason


def test_without_an_s3_source_the_local_directory_is_the_only_choice(tmp_path: Path) -> None:
    ds = _local(tmp_path / "roots")
    ref = _ref(ds, s3_uri="")
    source = choose_source(ref, [(tmp_path / "other-roots").resolve()])
    assert source.ref is ref
    assert not source.s3
    with pytest.raises(Exception, match="outside this host's dataset roots"):
        local_dataset_dir(ref, roots=[(tmp_path / "other-roots").resolve()])


@pytest.fixture
def far_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_server: SeaweedS3) -> HostConfig:
    """A host whose dataset roots do not hold the directory, with S3 settings and its own cache."""
    env = {
        "HYPERBENCH_VAR_DIR": str(tmp_path / "far-var"),
        "HYPERBENCH_CACHE_DIR": str(tmp_path / "far-cache"),
        "HYPERBENCH_DATASET_ROOTS": str(tmp_path / "far-datasets"),
        "HYPERBENCH_HOSTNAME": "far-01",
        "HYPERBENCH_S3_ENDPOINT_URL": s3_server.endpoint,
        "HYPERBENCH_S3_REGION": REGION,
        "HYPERBENCH_S3_BUCKETS": BUCKET,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return load()


def test_a_host_without_the_directory_syncs_the_version_from_s3_into_its_cache(
    far_host: HostConfig, s3_server: SeaweedS3, tmp_path: Path
) -> None:
    ds = _local(tmp_path / "near-datasets")
    ref = _ref(ds, s3_uri=_upload(s3_server, ds, "lease/1/"))

    with dataset_lease(ref, far_host) as path:
        assert path.is_relative_to(far_host.cache_dir)
        assert sha256_file(path / "manifest.jsonl") == ref["manifest_sha256"]
        files = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*.png"))
        assert files
        assert all((path / f).read_bytes() == (ds / f).read_bytes() for f in files)

    # A host that has the directory reads it in place and never touches its cache.
    near = dataclasses.replace(far_host, dataset_roots=[(tmp_path / "near-datasets").resolve()])
    with dataset_lease(ref, near) as path:
        assert path == ds
