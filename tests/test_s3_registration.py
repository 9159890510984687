"""Registering dataset versions from S3 (a real SeaweedFS over HTTP), the CLI and the admin.

The web side reads S3 through the counting proxy of tests/faultproxy.py, so a
refused URI can be shown to have sent no request anywhere.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client
from faultproxy import FaultProxy
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, make_dataset

from apps.catalog.models import Dataset
from hyperbench_web import settings as web_settings
from tests.conftest import load_script

BUCKET = "hb-registry"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def s3_web(settings: Any, s3_proxy: FaultProxy) -> FaultProxy:
    """The web side configured for S3: the proxy as its endpoint, one allow-listed bucket."""
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_proxy.url
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_BUCKETS = [BUCKET]
    return s3_proxy


def _requests(proxy: FaultProxy) -> int:
    return sum(proxy.counts.values())


def _upload(server: SeaweedS3, prefix: str, count: int = 6, size: int = 1500) -> Any:
    return make_dataset(server.client(), BUCKET, prefix, count=count, size=size, name="scans")


def _rows(server: SeaweedS3, prefix: str) -> list[dict[str, Any]]:
    body = server.client().get_object(Bucket=BUCKET, Key=prefix + "manifest.jsonl")["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


def _put_manifest(server: SeaweedS3, prefix: str, lines: list[str]) -> None:
    body = "".join(line + "\n" for line in lines).encode()
    server.client().put_object(Bucket=BUCKET, Key=prefix + "manifest.jsonl", Body=body)


def test_an_s3_dataset_registers_with_its_hash_sample_count_and_bytes(
    s3_server: SeaweedS3, s3_web: FaultProxy, as_alice: APIClient, alice: Any
) -> None:
    ref = _upload(s3_server, "good/v1/", count=12, size=1500)

    r = as_alice.post("/api/v1/datasets/", {"uri": f"s3://{BUCKET}/good/v1/"}, format="json")

    assert r.status_code == 201, r.content
    body = r.json()
    assert body["manifest_sha256"] == ref["manifest_sha256"]
    assert body["sample_count"] == 12
    assert body["total_bytes"] == 12 * 1500
    assert body["source_uri"] == f"s3://{BUCKET}/good/v1/"
    assert body["task"] == "ocr"
    assert (body["name"], body["version"]) == ("scans", "1")
    assert Dataset.objects.get().created_by == alice
    # Read through the configured endpoint only: the manifest, dataset.json, and the prefix's listing.
    assert s3_web.counts[("GET", f"/{BUCKET}/good/v1/manifest.jsonl")] == 1, dict(s3_web.counts)
    assert s3_web.counts[("GET", f"/{BUCKET}")] >= 1


def test_registering_the_same_s3_version_again_returns_the_same_row(
    s3_server: SeaweedS3, s3_web: FaultProxy, as_alice: APIClient
) -> None:
    _upload(s3_server, "again/v1/")
    first = as_alice.post("/api/v1/datasets/", {"uri": f"s3://{BUCKET}/again/v1/"}, format="json")
    second = as_alice.post("/api/v1/datasets/", {"uri": f"s3://{BUCKET}/again/v1"}, format="json")
    assert (first.status_code, second.status_code) == (201, 200)  # the second: "already registered"
    assert first.json()["id"] == second.json()["id"]
    assert Dataset.objects.count() == 1
    assert second.json()["outcome"] == "already"
    assert "already registered" in second.json()["message"]


def _bad_json(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    lines = [json.dumps(r) for r in rows]
    lines[2] = '{"id": "broken", '
    return 3, lines, "invalid JSON"


def _duplicate_id(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    rows[3]["id"] = rows[0]["id"]
    return 4, [json.dumps(r) for r in rows], "duplicate id"


def _missing_field(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    del rows[1]["text"]
    return 2, [json.dumps(r) for r in rows], "missing field 'text'"


def _escaping_key(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    rows[4]["image"] = "../x.png"
    return 5, [json.dumps(r) for r in rows], "../x.png"


def _missing_object(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    rows[2]["image"] = "images/0/not-uploaded.png"
    return 3, [json.dumps(r) for r in rows], "does not exist"


def _wrong_size(rows: list[dict[str, Any]]) -> tuple[int, list[str], str]:
    rows[1]["size"] += 1
    return 2, [json.dumps(r) for r in rows], "the manifest says"


@pytest.mark.parametrize(
    "breakage",
    [_bad_json, _duplicate_id, _missing_field, _escaping_key, _missing_object, _wrong_size],
    ids=["bad-json", "duplicate-id", "missing-field", "escaping-key", "missing-object", "wrong-size"],
)
def test_a_bad_s3_manifest_is_refused_naming_the_line_and_nothing_is_registered(
    breakage: Any, s3_server: SeaweedS3, s3_web: FaultProxy, as_alice: APIClient
) -> None:
    prefix = f"bad-{breakage.__name__.strip('_')}/v1/"
    _upload(s3_server, prefix)
    line, lines, words = breakage(_rows(s3_server, prefix))
    _put_manifest(s3_server, prefix, lines)

    r = as_alice.post("/api/v1/datasets/", {"uri": f"s3://{BUCKET}/{prefix}"}, format="json")

    assert r.status_code == 400, r.content
    problems = r.json()["problems"]
    assert any(f"manifest.jsonl line {line}:" in p and words in p for p in problems), problems
    assert Dataset.objects.count() == 0


def test_a_bucket_outside_the_allow_list_is_refused_without_a_request(
    s3_server: SeaweedS3, s3_web: FaultProxy, as_alice: APIClient
) -> None:
    make_dataset(s3_server.client(), "hb-not-allowed", "v1/", count=2)
    s3_web.reset()

    r = as_alice.post("/api/v1/datasets/", {"uri": "s3://hb-not-allowed/v1/"}, format="json")

    assert r.status_code == 400
    assert "not one of the buckets" in r.json()["detail"]
    assert "HYPERBENCH_S3_BUCKETS" in r.json()["detail"]
    assert _requests(s3_web) == 0
    assert Dataset.objects.count() == 0


def test_a_uri_that_names_an_endpoint_host_or_metadata_address_is_refused_without_a_request(
    s3_server: SeaweedS3, s3_web: FaultProxy, as_alice: APIClient, settings: Any, tmp_path: Path
) -> None:
    _upload(s3_server, "ep/v1/")
    settings.HYPERBENCH_DATASET_ROOTS = [tmp_path.resolve()]
    s3_web.reset()
    uris = [
        f"{s3_server.endpoint}/{BUCKET}/ep/v1/",  # the real server, named directly: still refused
        f"s3://127.0.0.1:{s3_server.port}/{BUCKET}/ep/v1/",
        f"s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/ep/v1/",
        f"s3://{BUCKET}/ep/v1/?endpoint={s3_server.endpoint}",
        "http://169.254.169.254/latest/meta-data/",
        "s3://169.254.169.254/latest/meta-data/",
        "file:///etc/",
        "/etc/passwd",
    ]
    for uri in uris:
        r = as_alice.post("/api/v1/datasets/", {"uri": uri}, format="json")
        assert r.status_code == 400, (uri, r.content)
        assert r.json()["detail"], uri
    assert _requests(s3_web) == 0
    assert Dataset.objects.count() == 0


def test_s3_registration_is_off_when_no_bucket_is_allow_listed(
    s3_web: FaultProxy, as_alice: APIClient, settings: Any
) -> None:
    settings.HYPERBENCH_S3_BUCKETS = []
    r = as_alice.post("/api/v1/datasets/", {"uri": f"s3://{BUCKET}/good/v1/"}, format="json")
    assert r.status_code == 400
    assert "not enabled" in r.json()["detail"]
    assert _requests(s3_web) == 0


@pytest.mark.parametrize(
    "value",
    [
        "http://169.254.169.254",
        "http://[fd00:ec2::254]",
        "http://metadata.google.internal",
        "ftp://s3.example.org",
        "http://s3.example.org/other-bucket/",
        "http://key:secret@s3.example.org",
    ],
)
def test_the_s3_endpoint_setting_refuses_metadata_addresses_and_urls_with_more_than_a_host(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HB_TEST_ENDPOINT", value)
    with pytest.raises(ImproperlyConfigured):
        web_settings._s3_endpoint("HB_TEST_ENDPOINT")


def test_the_s3_endpoint_setting_keeps_scheme_host_and_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HB_TEST_ENDPOINT", "http://127.0.0.1:8333/")
    assert web_settings._s3_endpoint("HB_TEST_ENDPOINT") == "http://127.0.0.1:8333"
    monkeypatch.setenv("HB_TEST_ENDPOINT", "")
    assert web_settings._s3_endpoint("HB_TEST_ENDPOINT") == ""


def test_the_register_dataset_command_registers_an_s3_version(
    s3_server: SeaweedS3, s3_web: FaultProxy, alice: Any
) -> None:
    ref = _upload(s3_server, "cli/v1/", count=5, size=700)
    out = io.StringIO()

    call_command("register_dataset", f"s3://{BUCKET}/cli/v1/", "--user", "alice", stdout=out)

    dataset = Dataset.objects.get()
    assert dataset.manifest_sha256 == ref["manifest_sha256"]
    assert (dataset.sample_count, dataset.total_bytes, dataset.created_by) == (5, 3500, alice)
    assert "5 samples" in out.getvalue()
    assert "3500 bytes" in out.getvalue()


def test_the_register_dataset_command_fails_with_the_line_numbers(
    s3_server: SeaweedS3, s3_web: FaultProxy, db: None
) -> None:
    prefix = "cli-bad/v1/"
    _upload(s3_server, prefix)
    line, lines, _ = _duplicate_id(_rows(s3_server, prefix))
    _put_manifest(s3_server, prefix, lines)

    with pytest.raises(CommandError, match=f"manifest.jsonl line {line}: duplicate id"):
        call_command("register_dataset", f"s3://{BUCKET}/{prefix}", stdout=io.StringIO())
    assert Dataset.objects.count() == 0


# --- the admin's "add dataset" form ------------------------------------------------------------


@pytest.fixture
def admin_client(db: None) -> Client:
    user = get_user_model().objects.create_superuser("ops", "ops@example.org", "pw-ops-admin")
    client = Client()
    client.force_login(user)
    return client


def _local_dataset(root: Path, count: int = 4) -> Path:
    out = root / "forms" / "1"
    load_script("make_sample_dataset").write_dataset(out, count, 3)
    return out


def test_the_admin_add_form_registers_a_file_dataset(
    admin_client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_DATASET_ROOTS = [tmp_path.resolve()]
    ds = _local_dataset(tmp_path)

    page = admin_client.get("/admin/catalog/dataset/add/")
    assert page.status_code == 200
    assert b'name="uri"' in page.content
    r = admin_client.post("/admin/catalog/dataset/add/", {"uri": ds.as_uri()})

    dataset = Dataset.objects.get()
    assert r.status_code == 302
    assert r["Location"] == f"/admin/catalog/dataset/{dataset.pk}/change/"
    assert dataset.sample_count == 4
    assert dataset.source_uri == ds.resolve().as_uri() + "/"
    assert dataset.created_by is not None
    assert dataset.created_by.get_username() == "ops"
    change = admin_client.get(r["Location"])
    assert change.status_code == 200
    assert dataset.manifest_sha256.encode() in change.content


def test_the_admin_add_form_shows_the_manifest_problems_and_registers_nothing(
    admin_client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_DATASET_ROOTS = [tmp_path.resolve()]
    ds = _local_dataset(tmp_path)
    lines = (ds / "manifest.jsonl").read_text().splitlines()
    lines[2] = "not json"
    (ds / "manifest.jsonl").write_text("".join(line + "\n" for line in lines))

    r = admin_client.post("/admin/catalog/dataset/add/", {"uri": ds.as_uri()})

    assert r.status_code == 200
    assert b"manifest.jsonl line 3: invalid JSON" in r.content
    assert Dataset.objects.count() == 0


def test_the_admin_add_form_refuses_a_path_outside_the_roots(
    admin_client: Client, settings: Any, tmp_path: Path
) -> None:
    settings.HYPERBENCH_DATASET_ROOTS = [(tmp_path / "roots").resolve()]
    r = admin_client.post("/admin/catalog/dataset/add/", {"uri": "file:///etc/"})
    assert r.status_code == 200
    assert b"outside the configured dataset roots" in r.content
    assert Dataset.objects.count() == 0
