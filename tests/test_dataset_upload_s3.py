"""``POST /api/v1/datasets/upload/`` with ``HYPERBENCH_UPLOADS_URI=s3://bucket/prefix/``.

A real SeaweedFS (tests/s3_fixtures.py) behind the counting, fault-injecting proxy: the upload
is converted locally, written to ``<prefix><name>/<version>/`` (manifest last) and registered as
that ``s3://`` URI; a PUT that fails mid-upload (the proxy's 503s, past the client's retries)
registers nothing and leaves no object in the bucket, and nothing on disk.
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone
from faultproxy import FaultProxy, Rule
from rest_framework.test import APIClient
from s3_fixtures import ACCESS_KEY, REGION, SECRET_KEY, SeaweedS3, scratch_bucket

from apps.catalog.models import Dataset, UploadClaim
from apps.catalog.uploads import CLAIM_STALE, uploaded_bytes
from tests.test_dataset_upload import layout_files, left_on_disk, make_zip, png, post
from worker.s3manifest import validate_s3

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def bucket(s3_server: SeaweedS3) -> Iterator[str]:
    with scratch_bucket(s3_server, "hb-uploads") as name:
        yield name


@pytest.fixture
def s3_uploads(settings: Any, tmp_path: Path, s3_server: SeaweedS3, bucket: str) -> Path:
    """Uploads stored in S3 (the server itself as the endpoint), staged in a local uploads root."""
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_server.endpoint
    settings.HYPERBENCH_S3_REGION = REGION
    settings.HYPERBENCH_S3_ACCESS_KEY_ID = ACCESS_KEY
    settings.HYPERBENCH_S3_SECRET_ACCESS_KEY = SECRET_KEY
    settings.HYPERBENCH_S3_BUCKETS = [bucket]
    settings.HYPERBENCH_UPLOADS_URI = f"s3://{bucket}/uploads/"
    root = tmp_path / "staging-root"
    settings.HYPERBENCH_DATASET_ROOTS = [(tmp_path / "datasets").resolve()]
    settings.HYPERBENCH_UPLOADS_ROOT = root.resolve()
    return root.resolve()


def keys(server: SeaweedS3, bucket: str) -> list[str]:
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def test_an_upload_lands_in_the_bucket_and_is_registered_as_s3(
    s3_server: SeaweedS3, s3_uploads: Path, bucket: str, as_alice: APIClient, alice: User, tmp_path: Path
) -> None:
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))

    assert r.status_code == 201, r.content
    body = r.json()
    uri = f"s3://{bucket}/uploads/up/1/"
    assert (body["source_uri"], body["sample_count"], body["outcome"]) == (uri, 2, "created")
    assert keys(s3_server, bucket) == [
        "uploads/up/1/dataset.json",
        "uploads/up/1/images/a.png",
        "uploads/up/1/images/b.png",
        "uploads/up/1/manifest.jsonl",
    ]
    got = s3_server.client().get_object(Bucket=bucket, Key="uploads/up/1/images/a.png")["Body"].read()
    assert got == png("red")
    # Read back without a run: the manifest validates from S3 and is the one registered.
    summary = validate_s3(uri, s3_server.client(), buckets=[bucket])
    ds = Dataset.objects.get(pk=body["id"])
    assert (summary["manifest_sha256"], summary["sample_count"]) == (ds.manifest_sha256, 2)
    assert ds.created_by == alice
    assert uploaded_bytes(alice) == ds.total_bytes > 0, "an S3 upload counts towards the quota"
    assert left_on_disk(s3_uploads) == [], "converted locally, stored only in S3"
    assert not list((s3_uploads / ".staging").iterdir())

    # The same version again: 409 before anything is written; the first upload stays as it was.
    again = post(as_alice, make_zip(tmp_path / "again.zip", layout_files()))
    assert again.status_code == 409, again.content
    assert len(keys(s3_server, bucket)) == 4
    assert Dataset.objects.count() == 1


def test_an_upload_of_a_version_being_uploaded_is_a_409_that_writes_nothing(
    s3_server: SeaweedS3, s3_uploads: Path, bucket: str, as_alice: APIClient, tmp_path: Path
) -> None:
    """Another request writes ``up@1`` now (its claim): this one writes no object, so its own
    clean-up can never delete what the other wrote. A claim left by a web process that died
    (older than CLAIM_STALE) is taken over; a finished upload leaves no claim."""
    claim = UploadClaim.objects.create(name="up", version="1")
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))
    assert r.status_code == 409, r.content
    assert "being uploaded by another request" in r.json()["detail"]
    assert keys(s3_server, bucket) == []
    assert not Dataset.objects.exists()
    assert left_on_disk(s3_uploads) == []

    abandoned = timezone.now() - CLAIM_STALE - timedelta(seconds=1)
    UploadClaim.objects.filter(pk=claim.pk).update(created_at=abandoned)
    r = post(as_alice, make_zip(tmp_path / "up2.zip", layout_files()))
    assert r.status_code == 201, r.content
    assert len(keys(s3_server, bucket)) == 4
    assert not UploadClaim.objects.exists()


def test_a_converted_format_is_written_to_s3_too(
    s3_server: SeaweedS3, s3_uploads: Path, bucket: str, as_alice: APIClient, tmp_path: Path
) -> None:
    path = tmp_path / "MMBench.tsv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["index", "image", "question", "answer"])
        w.writerow(["0", base64.b64encode(png()).decode(), "Colour?", "white"])
    r = post(as_alice, path, format="vlmevalkit-tsv", name="mmb", version="v1", task="vqa")

    assert r.status_code == 201, r.content
    assert r.json()["source_uri"] == f"s3://{bucket}/uploads/mmb/v1/"
    found = keys(s3_server, bucket)
    assert found[-1] == "uploads/mmb/v1/manifest.jsonl"
    assert "uploads/mmb/v1/dataset.json" in found
    assert len(found) == 3  # the image, dataset.json, manifest.jsonl


@pytest.mark.parametrize("failing", ["/images/b.png", "/manifest.jsonl"])
def test_a_put_failing_mid_upload_registers_nothing_and_leaves_no_object(
    failing: str,
    s3_server: SeaweedS3,
    s3_uploads: Path,
    s3_proxy: FaultProxy,
    bucket: str,
    as_alice: APIClient,
    tmp_path: Path,
    settings: Any,
) -> None:
    # Through the proxy (it relays a PUT with a Content-Length; botocore's upload_file sends one).
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_proxy.url
    rule = s3_proxy.add(Rule("503", match=failing, times=-1, method="PUT"))

    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))

    assert r.status_code == 400, r.content
    assert f"could not be written to s3://{bucket}/uploads/up/1/" in r.json()["detail"]
    assert rule.hits >= 1, "the fault was reached"
    assert s3_proxy.counts[("PUT", f"/{bucket}/uploads/up/1/images/a.png")] >= 1, "the upload had begun"
    assert keys(s3_server, bucket) == [], "the objects written are removed"
    assert not Dataset.objects.exists()
    assert left_on_disk(s3_uploads) == []
    assert not list((s3_uploads / ".staging").iterdir())


def test_a_bucket_that_is_not_allow_listed_turns_uploads_off(
    s3_uploads: Path, settings: Any, s3_proxy: FaultProxy, as_alice: APIClient, tmp_path: Path
) -> None:
    settings.HYPERBENCH_S3_ENDPOINT_URL = s3_proxy.url
    settings.HYPERBENCH_UPLOADS_URI = "s3://not-listed/uploads/"
    r = post(as_alice, make_zip(tmp_path / "up.zip", layout_files()))

    assert r.status_code == 503, r.content
    assert "HYPERBENCH_UPLOADS_URI" in r.json()["detail"]
    assert "HYPERBENCH_S3_BUCKETS" in r.json()["detail"]
    assert sum(s3_proxy.counts.values()) == 0, "no request reached S3"
    assert not Dataset.objects.exists()
