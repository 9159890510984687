"""The one S3 URI parser and client factory (worker/s3.py) that web, worker and artifact store share."""

from __future__ import annotations

import pytest

from worker.s3 import S3ClientSettings, S3UriError, endpoint_for, parse_s3_uri, s3_client, s3_uri


@pytest.mark.parametrize(
    ("uri", "prefix", "want"),
    [
        ("s3://b/key.json", False, ("b", "key.json")),
        ("s3://b/a/b/", False, ("b", "a/b/")),
        ("s3://b/a/b", True, ("b", "a/b/")),
        ("s3://b", True, ("b", "")),
        ("s3://b/", True, ("b", "")),
        ("s3://b/with%20space/x", False, ("b", "with space/x")),
    ],
)
def test_plain_uris_parse_to_bucket_and_key(uri: str, prefix: bool, want: tuple[str, str]) -> None:
    assert parse_s3_uri(uri, prefix=prefix) == want


@pytest.mark.parametrize(
    "uri",
    [
        "http://b/x",
        "s3:///x",
        "s3://user@b/x",
        "s3://b:9000/x",
        "s3://b/x?versionId=1",
        "s3://b/x#frag",
        "s3://b/a/../x",
        "s3://b/./x",
        "s3://b/a//x",
        "s3://b/a\\x",
    ],
)
def test_anything_else_is_refused_by_every_side_alike(uri: str) -> None:
    with pytest.raises(S3UriError):
        parse_s3_uri(uri)
    with pytest.raises(S3UriError):
        parse_s3_uri(uri, prefix=True)


def test_a_key_round_trips_through_its_uri() -> None:
    key = "runs/1/per sample+ü.jsonl"
    assert parse_s3_uri(s3_uri("b", key)) == ("b", key)


def test_the_client_factory_always_names_its_endpoint_and_caches_per_settings() -> None:
    assert endpoint_for(None, "eu-west-1") == "https://s3.eu-west-1.amazonaws.com"
    assert endpoint_for("http://127.0.0.1:8333/", "x") == "http://127.0.0.1:8333"
    aws = S3ClientSettings(None, "eu-west-1", "AKIA", "secret")
    client = s3_client(aws)
    assert client.meta.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert s3_client(S3ClientSettings(None, "eu-west-1", "AKIA", "secret")) is client
    local = s3_client(S3ClientSettings("http://127.0.0.1:8333", "us-east-1", "AKIA", "secret"))
    assert local.meta.endpoint_url == "http://127.0.0.1:8333"
    assert local.meta.config.s3["addressing_style"] == "path"
