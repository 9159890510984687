"""Downloaded artifacts keep their extensions: ``metrics`` is saved as ``metrics.json``.

An artifact's API name (``metrics``, ``shards/0/predictions``) has no extension; the
download names it after the stored file's (``Content-Disposition: attachment;
filename="metrics.json"``), whether the API streams it (file://) or S3 answers a
presigned link (``ResponseContentDisposition``, fetched over HTTP from a real
S3-protocol server). The run's report page stays inline: it is viewed, not saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests
from django.contrib.auth.models import User
from rest_framework.test import APIClient
from s3_fixtures import SeaweedS3

from apps.runs import artifacts as web_artifacts
from tests import test_artifact_store as store_tests
from tests.conftest import streamed
from tests.test_artifact_store import _publish_all, _settings, _succeeded_run
from worker.storage import Artifacts, FileStore, S3Store

# The S3 fixtures of tests/test_artifact_store.py: a bucket of the test's own, the web side set up for it.
bucket = store_tests.bucket
web_s3 = store_tests.web_s3

# Every artifact a finished one-shard run offers (tests/test_artifact_store.py::_publish_all) and
# the name its download is saved under.
EXPECTED = {
    "metrics": "metrics.json",
    "report": "report.html",
    "predictions": "predictions.jsonl",
    "per_sample": "per_sample.jsonl",
    "shards/0/predictions": "shards-0-predictions.jsonl",
    "logs/infer/shard-0/attempt-1.log": "logs-infer-shard-0-attempt-1.log",
    "logs/infer/shard-0/attempt-2.log": "logs-infer-shard-0-attempt-2.log",
    "logs/evaluate/attempt-1.log": "logs-evaluate-attempt-1.log",
    "logs/report/attempt-1.log": "logs-report-attempt-1.log",
}


@pytest.mark.parametrize(
    ("name", "uri", "filename"),
    [
        ("metrics", "file:///srv/a/runs/1/metrics.json", "metrics.json"),
        ("report", "s3://b/hb/runs/1/report.html", "report.html"),
        (
            "shards/3/predictions",
            "s3://b/hb/runs/1/shards/3/attempt-2/predictions.jsonl",
            "shards-3-predictions.jsonl",
        ),
        ("shards-3-predictions", "file:///a/s/3/attempt-1/predictions.jsonl", "shards-3-predictions.jsonl"),
        ("logs/evaluate/attempt-1.log", "file:///l/attempt-1.log", "logs-evaluate-attempt-1.log"),
        ("blob", "file:///a/blob", "blob"),
    ],
)
def test_a_download_is_named_after_the_artifact_with_the_stored_files_extension(
    name: str, uri: str, filename: str
) -> None:
    if uri.startswith("file://"):
        loc = web_artifacts.Location(uri=uri, path=Path(uri[len("file://") :]))
    else:
        bucket_name, _, key = uri[len("s3://") :].partition("/")
        loc = web_artifacts.Location(uri=uri, bucket=bucket_name, key=key)
    assert web_artifacts.download_filename(name, loc) == filename
    assert web_artifacts.attachment_header(name, loc) == f'attachment; filename="{filename}"'


def test_presigned_links_make_s3_answer_each_artifact_as_a_download_with_its_extension(
    web_s3: str, s3_server: SeaweedS3, alice: User, as_alice: APIClient, tmp_path: Path
) -> None:
    run = _succeeded_run(alice, web_s3)
    store = Artifacts(FileStore([tmp_path]), S3Store(_settings(s3_server.endpoint, (web_s3,))))
    published = _publish_all(run, store, tmp_path)
    assert set(published) == set(EXPECTED)

    links = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/").json()["artifacts"]

    assert set(links) == set(EXPECTED)
    for name, url in links.items():
        got = requests.get(url, timeout=10)
        assert got.status_code == 200, (name, got.text[:300])
        assert got.content == published[name], name
        assert got.headers["Content-Disposition"] == f'attachment; filename="{EXPECTED[name]}"', name
    # The API's own URL for one artifact redirects to a link that does the same.
    one = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/metrics/")
    assert one.status_code == 302
    got = requests.get(one["Location"], timeout=10)
    assert got.headers["Content-Disposition"] == 'attachment; filename="metrics.json"'
    assert got.headers["Content-Type"] == "application/json"


def test_the_api_streams_each_file_artifact_as_a_download_with_its_extension(
    settings: Any, alice: User, as_alice: APIClient, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    settings.HYPERBENCH_ARTIFACTS_URI = root.as_uri() + "/"
    run = _succeeded_run(alice, settings.HYPERBENCH_ARTIFACTS_URI)
    published = _publish_all(run, Artifacts(FileStore([root])), tmp_path)

    links = as_alice.get(f"/api/v1/runs/{run.pk}/artifacts/").json()["artifacts"]

    assert set(links) == set(EXPECTED)
    for name, url in links.items():
        r = as_alice.get(url)
        assert r.status_code == 200, name
        assert streamed(r) == published[name], name
        assert r["Content-Disposition"] == f'attachment; filename="{EXPECTED[name]}"', name


def test_the_report_page_stays_inline(
    settings: Any, alice: User, as_alice: APIClient, tmp_path: Path
) -> None:
    root = tmp_path / "artifacts"
    settings.HYPERBENCH_ARTIFACTS_URI = root.as_uri() + "/"
    run = _succeeded_run(alice, settings.HYPERBENCH_ARTIFACTS_URI)
    _publish_all(run, Artifacts(FileStore([root])), tmp_path)

    r = as_alice.get(f"/api/v1/runs/{run.pk}/report/")

    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/html")
    assert not r.get("Content-Disposition", "").startswith("attachment")
