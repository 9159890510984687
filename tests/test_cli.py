"""The ``hyperbench`` CLI end to end: the installed console script, run as a subprocess against
the test server over HTTP (pytest-django's ``live_server``), as a user would run it.

The first tests need no Docker; the ``docker`` ones run the fast ``echo`` model on the real
workers (fixture ``platform``), follow it with ``runs start --follow --json``, download its
artifacts and cancel a slow run.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from hyperbench_web.devstack import Stack
from tests.conftest import IMAGE_VERSION, echo_dataset, load_script, register_model

HYPERBENCH = Path(sys.executable).parent / "hyperbench"
PINNED = "sha256:" + "a" * 64


class Cli:
    """Runs ``hyperbench`` with the live server's URL and a home and config folder of the test's own."""

    def __init__(self, url: str, home: Path) -> None:
        self.url, self.home = url, home
        self.config_home = home / "config"

    def __call__(self, *args: str, token: str | None = None, stdin: str = "", timeout: float = 60) -> Any:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HYPERBENCH_")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.config_home), HYPERBENCH_URL=self.url)
        env.update(COLUMNS="200")
        if token is not None:
            env["HYPERBENCH_TOKEN"] = token
        proc = subprocess.run(
            [str(HYPERBENCH), *args], input=stdin, capture_output=True, text=True, env=env, timeout=timeout
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    @property
    def config_file(self) -> Path:
        return self.config_home / "hyperbench" / "config.json"


def docs(stdout: str) -> list[Any]:
    """The JSON documents printed with --json, one per line."""
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def token_of(user: User) -> str:
    return str(Token.objects.get_or_create(user=user)[0].key)


@pytest.fixture
def cli(live_server: Any, tmp_path: Path) -> Cli:
    cache.clear()  # the throttles' counters (locmem, this process): earlier tests' logins don't count
    home = tmp_path / "home"
    home.mkdir()
    return Cli(live_server.url, home)


@pytest.fixture
def dataset_root(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    settings.HYPERBENCH_DATASET_ROOTS = [root.resolve()]
    return root


def test_the_console_script_is_installed_with_the_project() -> None:
    assert HYPERBENCH.is_file(), "pip install -e . did not install the `hyperbench` console script"
    out = subprocess.run([str(HYPERBENCH), "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("login", "datasets", "models", "experiments", "runs", "compare", "leaderboard", "hosts"):
        assert command in out
    assert "exit codes" in out
    module = subprocess.run(
        [sys.executable, "-m", "hyperbench_cli", "--version"], capture_output=True, text=True
    )
    assert module.returncode == 0
    assert module.stdout.startswith("hyperbench ")


def test_datasets_import_parses_to_the_request_of_datasets_upload() -> None:
    """``datasets import FORMAT PATH`` is upload's spelling in issue 12: the same handler and fields
    (the request itself, against the live server: tests/test_dataset_upload.py)."""
    from hyperbench_cli.commands.datasets import cmd_upload
    from hyperbench_cli.main import build_parser

    fields = ["--name", "n", "--version", "1", "--task", "kie", "--columns", '{"image": "file"}']
    imported = build_parser().parse_args(["datasets", "import", "kie-json", "cord.zip", *fields])
    uploaded = build_parser().parse_args(["datasets", "upload", "cord.zip", "--format", "kie-json", *fields])
    assert imported.func is uploaded.func is cmd_upload
    assert vars(imported) == {**vars(uploaded), "datasets_command": "import"}

    for argv in (
        ["datasets", "import", "kie-json", "cord.zip", "--version", "1"],  # --name is required
        ["datasets", "import", "kie-json", "cord.zip", "--name", "n"],  # --version is required
        ["datasets", "import", "layout", "up.zip", "--name", "n", "--version", "1"],  # that is upload
    ):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(argv)
        assert exited.value.code == 2


def test_login_writes_a_private_config_file_that_later_commands_use(cli: Cli, alice: User) -> None:
    p = cli("login", "--username", "alice", "--password-stdin", stdin="pw-alice\n")

    assert p.returncode == 0, p.stderr
    assert "Logged in" in p.stdout
    assert "alice" in p.stdout
    assert stat.S_IMODE(cli.config_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config_file.parent.stat().st_mode) == 0o700
    saved = json.loads(cli.config_file.read_text())
    assert saved == {"url": cli.url, "username": "alice", "token": token_of(alice)}
    assert token_of(alice) not in p.stdout, "the token is saved, never printed"

    listed = cli("datasets", "list", "--json")  # no token in the environment: the config file's
    assert listed.returncode == 0, listed.stderr
    assert docs(listed.stdout) == [[]]

    # The config's token goes only to the server it came from.
    other = cli("datasets", "list", "--url", "http://127.0.0.1:9/")
    assert other.returncode == 4
    assert "not logged in to http://127.0.0.1:9" in other.stderr


def test_a_wrong_password_is_an_auth_error(cli: Cli, alice: User) -> None:
    p = cli("login", "-u", "alice", "--password-stdin", stdin="wrong\n")

    assert p.returncode == 4
    assert "login failed" in p.stderr
    assert "credentials" in p.stderr
    assert not cli.config_file.exists()


def test_datasets_register_list_show_and_an_experiment_is_created(
    cli: Cli, alice: User, as_staff: APIClient, dataset_root: Path
) -> None:
    ds = dataset_root / "cli-docs" / "1"
    load_script("make_sample_dataset").write_dataset(ds, 3, 5)
    register_model(as_staff, "echo", "hyperbench/testkit:1", PINNED)
    token = token_of(alice)

    reg = cli("datasets", "register", ds.as_uri() + "/", "--json", token=token)
    assert reg.returncode == 0, reg.stderr
    [dataset] = docs(reg.stdout)
    assert dataset["outcome"] == "created"
    assert dataset["sample_count"] == 3
    again = cli("datasets", "register", ds.as_uri() + "/", token=token)
    assert again.returncode == 0
    assert "already" in again.stdout

    [listed] = docs(cli("datasets", "list", "--json", token=token).stdout)
    assert [d["id"] for d in listed] == [dataset["id"]]
    table = cli("datasets", "list", token=token)
    assert table.returncode == 0
    assert dataset["name"] in table.stdout
    assert "cli-docs" in table.stdout
    shown = cli("datasets", "show", str(dataset["id"]), token=token)
    assert shown.returncode == 0
    assert dataset["manifest_sha256"] in shown.stdout

    created = cli(
        "experiments", "create", "--name", "cli try", "--model", "echo", "--dataset", str(dataset["id"]),
        "--params", '{"mode": "fast"}', "--prompt", "Read it.", "--json", token=token,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    [exp] = docs(created.stdout)
    assert (exp["name"], exp["model"], exp["params"], exp["prompt"]) == (
        "cli try",
        "echo",
        {"mode": "fast"},
        "Read it.",
    )
    [exps] = docs(cli("experiments", "list", "--json", token=token).stdout)
    assert [e["id"] for e in exps] == [exp["id"]]

    # The server's word on a bad experiment, one line; a bad --params never leaves the machine.
    bad = cli(
        "experiments",
        "create",
        "--name",
        "x",
        "--model",
        "nope",
        "--dataset",
        str(dataset["id"]),
        token=token,
    )
    assert bad.returncode == 3
    assert "HTTP 400" in bad.stderr
    assert "model" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    usage = cli(
        "experiments",
        "create",
        "--name",
        "x",
        "--model",
        "echo",
        "--dataset",
        "1",
        "--params",
        "{",
        token=token,
    )
    assert usage.returncode == 2
    assert "--params is not valid JSON" in usage.stderr


def test_only_staff_register_models(cli: Cli, alice: User, staff: User) -> None:
    args = (
        "models",
        "register",
        "--name",
        "tiny",
        "--image",
        "hyperbench/tiny:1",
        "--digest",
        PINNED,
        "--json",
    )

    refused = cli(*args, token=token_of(alice))
    assert refused.returncode == 4
    assert "permission denied (HTTP 403" in refused.stderr

    done = cli(*args, "--description", "a tiny model", token=token_of(staff))
    assert done.returncode == 0, done.stderr
    [model] = docs(done.stdout)
    assert (model["name"], model["digest"], model["description"]) == ("tiny", PINNED, "a tiny model")
    [models] = docs(cli("models", "list", "--json", token=token_of(alice)).stdout)
    assert [m["name"] for m in models] == ["tiny"]
    shown = cli("models", "show", "tiny", token=token_of(alice))
    assert shown.returncode == 0
    assert "hyperbench/tiny:1" in shown.stdout


def test_errors_are_one_line_with_their_exit_code(cli: Cli, alice: User) -> None:
    bad = cli("runs", "list", token="0" * 40)
    assert bad.returncode == 4
    assert "authentication failed (HTTP 401" in bad.stderr
    assert "Invalid token" in bad.stderr

    unknown = cli("runs", "show", "987654", token=token_of(alice))
    assert unknown.returncode == 3
    assert "not found" in unknown.stderr
    assert "/api/v1/runs/987654/" in unknown.stderr
    assert cli("runs", "retry", "987654", token=token_of(alice)).returncode == 3
    assert cli("artifacts", "download", "987654", token=token_of(alice)).returncode == 3

    nobody = cli("hosts")  # neither a token nor a config file
    assert nobody.returncode == 4
    assert "hyperbench login" in nobody.stderr

    assert cli("runs", "show", "abc", token=token_of(alice)).returncode == 2
    assert cli("runs", "start", token=token_of(alice)).returncode == 2  # argparse: --experiment is required

    board = cli("leaderboard", "--task", "nope", token=token_of(alice))
    assert board.returncode == 3
    assert "Unknown task" in board.stderr

    for p in (bad, unknown, nobody, board):
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_throttled_login_says_when_to_retry(cli: Cli, settings: Any, alice: User) -> None:
    settings.HYPERBENCH_API_THROTTLE_TOKEN = "1/minute"

    first = cli("login", "-u", "alice", "--password-stdin", stdin="pw-alice\n")
    second = cli("login", "-u", "alice", "--password-stdin", stdin="pw-alice\n")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 3
    assert "too many requests (HTTP 429" in second.stderr
    assert "Retry after" in second.stderr
    assert "Retry-After" in second.stderr


def test_runs_leaderboard_and_hosts_read_as_tables_and_as_json(cli: Cli, alice: User) -> None:
    from apps.hosts.models import Host
    from tests.test_leaderboard import _dataset as board_dataset
    from tests.test_leaderboard import _run as board_run

    dataset = board_dataset("board")
    run = board_run(alice, dataset, "m1", {"cer": 0.125})
    Host.objects.create(
        name="gpu-box",
        last_seen="2020-01-01T00:00:00Z",
        reported_at="2020-01-01T00:00:00Z",
        nvml=True,
        gpus=[
            {
                "index": 0,
                "name": "H100",
                "memory_total_mb": 81920,
                "memory_used_mb": 1024,
                "utilization_pct": 7,
            }
        ],
        running=[{"run": run.pk, "shard": 0, "stage": "infer", "gpus": ["0"], "started": ""}],
        cache_bytes=10**9,
        cache_budget_bytes=10**11,
    )
    token = token_of(alice)

    shown = cli("runs", "show", str(run.pk), token=token)
    assert shown.returncode == 0, shown.stderr
    assert "95% CI" in shown.stdout
    assert "cer" in shown.stdout
    assert "0.1250" in shown.stdout
    [one] = docs(cli("runs", "show", str(run.pk), "--json", token=token).stdout)
    assert one["id"] == run.pk
    assert one["state"] == "succeeded"
    [runs] = docs(cli("runs", "list", "--json", "--state", "succeeded", token=token).stdout)
    assert [r["id"] for r in runs] == [run.pk]
    followed = cli("runs", "show", str(run.pk), "--follow", "--json", token=token)
    assert followed.returncode == 0
    assert docs(followed.stdout)[-1]["state"] == "succeeded"

    [board] = docs(cli("leaderboard", "--task", "ocr", "--json", token=token).stdout)
    assert board["results"][0]["entries"][0]["run"] == run.pk
    table = cli("leaderboard", "--dataset", str(dataset.pk), token=token)
    assert table.returncode == 0
    assert "m1" in table.stdout
    assert "lower is better" in table.stdout

    hosts = cli("hosts", token=token)
    assert hosts.returncode == 0, hosts.stderr
    assert "gpu-box" in hosts.stdout
    assert "SILENT" in hosts.stdout
    assert "H100" in hosts.stdout
    assert f"run {run.pk} shard 0 infer on GPU 0" in hosts.stdout
    [hosts_json] = docs(cli("hosts", "--json", token=token).stdout)
    assert hosts_json[0]["name"] == "gpu-box"
    assert hosts_json[0]["silent"] is True

    # A succeeded run is not retried: the server's reason in one line, exit 3.
    retry = cli("runs", "retry", str(run.pk), token=token)
    assert retry.returncode == 3
    assert "only a failed or cancelled run can be retried" in retry.stderr


# --- with the real workers and Docker ---------------------------------------------------------------


@pytest.fixture
def e2e(platform: Stack, cli: Cli, as_staff: APIClient, as_alice: APIClient, alice: User) -> Cli:
    return cli


@pytest.mark.docker
def test_a_followed_run_ends_succeeded_and_its_artifacts_download(
    e2e: Cli,
    alice: User,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
    tmp_path: Path,
) -> None:
    cli, token = e2e, token_of(alice)
    dataset_id = echo_dataset(
        as_staff, as_alice, images, roots["datasets"] / "cli-echo" / "1", count=6, seed=21
    )
    created = cli(
        "experiments", "create", "--name", "cli echo", "--model", "echo",
        "--dataset", str(dataset_id), "--json",
        token=token,
    )  # fmt: skip
    [exp] = docs(created.stdout)

    p = cli("runs", "start", "--experiment", str(exp["id"]), "--follow", "--json", token=token, timeout=300)

    assert p.returncode == 0, (p.stdout, p.stderr)
    printed = docs(p.stdout)
    started, final = printed[0], printed[-1]
    assert final["id"] == started["id"], final.get("error_reason")
    assert final["state"] == "succeeded", final.get("error_reason")
    assert final["metrics"]["n"] == 6
    run_id = str(final["id"])

    out = tmp_path / "out"
    dl = cli("artifacts", "download", run_id, "-o", str(out), "--json", token=token)
    assert dl.returncode == 0, dl.stderr
    names = {f["name"]: Path(f["path"]) for f in docs(dl.stdout)[0]["files"]}
    assert names["report"] == out / "report.html"
    assert "<html" in names["report"].read_text().lower()
    assert json.loads((out / "metrics.json").read_text())["n"] == 6
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    assert (out / "shards" / "0" / "predictions.jsonl").is_file()
    one = cli("artifacts", "download", run_id, "report", "-o", str(tmp_path / "one"), token=token)
    assert one.returncode == 0
    assert (tmp_path / "one" / "report.html").is_file()

    [logs] = docs(cli("runs", "logs", run_id, "--json", token=token).stdout)
    assert any(name.startswith("logs/infer/") for name in logs["logs"]), logs
    name = next(n for n in logs["logs"] if n.startswith("logs/infer/"))
    text = cli("runs", "logs", run_id, name, token=token)
    assert text.returncode == 0
    assert text.stdout.rstrip("\n") == (out / name).read_text().rstrip("\n")
    every = cli("runs", "logs", run_id, "--all", token=token)
    assert every.returncode == 0, every.stdout
    assert all(f"==> {n} <==" in every.stdout for n in logs["logs"]), every.stdout

    table = cli("runs", "show", run_id, token=token)
    assert "95% CI" in table.stdout
    assert "succeeded" in table.stdout

    # As a person follows a run: a progress bar on stderr, then the metrics table with CIs.
    human = cli("runs", "start", "--experiment", str(exp["id"]), "--follow", token=token, timeout=300)
    assert human.returncode == 0, (human.stdout, human.stderr)
    assert "6/6" in human.stderr
    assert "sample" in human.stderr
    assert "95% CI" in human.stdout
    assert "samples with errors: 0 of 6" in human.stdout

    [done] = docs(cli("runs", "list", "--state", "succeeded", "--json", token=token).stdout)
    assert len(done) == 2
    compared = cli("compare", *(str(r["id"]) for r in done), "--json", token=token, timeout=300)
    assert compared.returncode == 0, (compared.stdout, compared.stderr)
    [cmp] = docs(compared.stdout)
    assert cmp["state"] == "succeeded"
    assert cmp["report_url"].endswith(f"/comparisons/{cmp['id']}/report/")


@pytest.mark.docker
def test_a_slow_run_is_cancelled_from_the_cli(
    e2e: Cli,
    alice: User,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    cli, token = e2e, token_of(alice)
    ds = roots["datasets"] / "cli-slow" / "1"
    load_script("make_sample_dataset").write_dataset(ds, 8, 22)
    register_model(as_staff, "cli-slow", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    dataset = cli("datasets", "register", ds.as_uri() + "/", "--json", token=token)
    [d] = docs(dataset.stdout)
    [exp] = docs(
        cli(
            "experiments", "create", "--name", "slow", "--model", "cli-slow", "--dataset", str(d["id"]),
            "--params", '{"mode": "slow", "sleep_s": 1}', "--json", token=token,
        ).stdout
    )  # fmt: skip
    [run] = docs(cli("runs", "start", "--experiment", str(exp["id"]), "--json", token=token).stdout)

    cancelled = cli("runs", "cancel", str(run["id"]), token=token)

    assert cancelled.returncode == 0, cancelled.stderr
    followed = cli("runs", "show", str(run["id"]), "--follow", "--json", token=token, timeout=120)
    assert followed.returncode == 1, "a followed run that ends cancelled exits 1"
    assert docs(followed.stdout)[-1]["state"] == "cancelled"
