"""The one-machine settings file: created once, read by every process the devstack starts."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hyperbench_web import envfile
from hyperbench_web.devstack import Stack


def test_the_first_start_creates_the_secrets_once_and_private(tmp_path: Path) -> None:
    path = tmp_path / "hyperbench.env"

    first = envfile.ensure(path)
    again = envfile.ensure(path)

    assert first == again, "a second start keeps the same secrets"
    assert len(first["SECRET_KEY"]) >= 40
    assert len(first["HYPERBENCH_ADMIN_PASSWORD"]) >= 20
    assert first["FLOWER_BASIC_AUTH"] == f"admin:{first['HYPERBENCH_ADMIN_PASSWORD']}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_earlier_setups_secret_files_are_carried_over(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("old-secret\n")
    (tmp_path / "admin_password").write_text("old-password\n")

    got = envfile.ensure(tmp_path / "hyperbench.env", legacy_dir=tmp_path)

    assert (got["SECRET_KEY"], got["HYPERBENCH_ADMIN_PASSWORD"]) == ("old-secret", "old-password")


def test_update_replaces_in_place_keeps_comments_and_refuses_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "hyperbench.env"
    path.write_text("# mine\nHYPERBENCH_S3_BUCKETS=a\nKEEP=1\n")

    envfile.update(path, {"HYPERBENCH_S3_BUCKETS": "a,b", "NEW": "x=y"})

    assert path.read_text() == "# mine\nHYPERBENCH_S3_BUCKETS=a,b\nKEEP=1\nNEW=x=y\n"
    assert envfile.read(path)["NEW"] == "x=y"
    path.write_text("export FOO bar\n")
    with pytest.raises(ValueError, match=r"hyperbench\.env:1: expected NAME=value"):
        envfile.read(path)


def test_every_process_reads_the_file_and_host_workers_never_get_the_web_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECRET_KEY", raising=False)
    monkeypatch.delenv("HYPERBENCH_S3_BUCKETS", raising=False)
    monkeypatch.setenv("HYPERBENCH_S3_REGION", "eu-west-3")  # the environment wins over the file
    stack = Stack(var_dir=tmp_path, hosts=2)
    stack.start(names=[])  # creates the file, starts nothing
    envfile.update(stack.settings_path, {"HYPERBENCH_S3_BUCKETS": "datasets", "HYPERBENCH_S3_REGION": "x"})
    secrets = envfile.read(stack.settings_path)

    web = stack._env(django=True)
    host2 = stack._env(django=False, host="host2")

    assert web["SECRET_KEY"] == secrets["SECRET_KEY"]
    assert web["HYPERBENCH_S3_BUCKETS"] == host2["HYPERBENCH_S3_BUCKETS"] == "datasets"
    assert web["HYPERBENCH_S3_REGION"] == host2["HYPERBENCH_S3_REGION"] == "eu-west-3"
    for name in ("SECRET_KEY", "HYPERBENCH_ADMIN_PASSWORD", "FLOWER_BASIC_AUTH", "DJANGO_SETTINGS_MODULE"):
        assert name not in host2, name
    flower, _ = stack.command("flower")
    assert f"--basic-auth={secrets['FLOWER_BASIC_AUTH']}" in flower, "Flower always asks for a login"
