"""Fixtures: real Redis, real Docker, real Celery workers as separate processes.

A part the suite needs that cannot be started makes the test fail with the
reason, never skip.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import docker
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractUser
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from s3_fixtures import _proxy, s3_proxy, s3_server  # noqa: F401 - the S3 server fixtures

from hyperbench_web.devstack import REPO, Stack

IMAGE_VERSION = (REPO / "images" / "VERSION").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of the suite's own on a free loopback port (no crosstalk with a running demo)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; run `make test` (scripts/bootstrap.sh installs it).")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"redis-server did not start on 127.0.0.1:{port}")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(
            f"the Docker engine is not reachable ({e}); run `make test` (scripts/ensure-docker.sh starts it)."
        )
    return client


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> dict[str, str]:
    """The built images the suite runs, name -> image id. Fails if one was not built."""
    found = {}
    for name in ("ocr-rapidocr", "eval", "report", "testkit", "probe", "vlm-openai"):
        ref = f"hyperbench/{name}:{IMAGE_VERSION}"
        try:
            found[name] = str(docker_client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {ref} is missing; build it with `make images`.")
    return found


def load_script(name: str) -> ModuleType:
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def roots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hb")
    out = {"datasets": base / "datasets", "artifacts": base / "artifacts", "var": base / "var"}
    for p in out.values():
        p.mkdir()
    # The containers run as uid 10001 and read the datasets: keep the tree traversable.
    for p in (base, *out.values()):
        p.chmod(0o755)
    return out


@pytest.fixture(scope="session")
def sample_dataset(roots: dict[str, Path]) -> Path:
    """The demo's sample dataset (60 rendered documents), generated once per session."""
    out = roots["datasets"] / "sample-docs" / "1"
    load_script("make_sample_dataset").write_dataset(out, 60, 7)
    return out


def _db_url(settings_dict: dict[str, Any]) -> str:
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    user = settings_dict.get("USER") or ""
    pw = f":{settings_dict['PASSWORD']}" if settings_dict.get("PASSWORD") else ""
    host = settings_dict.get("HOST") or "127.0.0.1"
    port = settings_dict.get("PORT") or 5432
    return f"postgres://{user}{pw}@{host}:{port}/{settings_dict['NAME']}"


@pytest.fixture(scope="session")
def workers(
    django_db_setup: None,
    django_db_blocker: Any,
    redis_url: str,
    roots: dict[str, Path],
    images: dict[str, str],
) -> Iterator[Stack]:
    """A control worker and a host worker, as separate processes, on the test DB and the suite's Redis."""
    from django.db import connection

    from hyperbench_web.celery import app

    app.conf.broker_url = redis_url
    with django_db_blocker.unblock():
        db_url = _db_url(connection.settings_dict)
    stack = Stack(
        var_dir=roots["var"],
        broker_url=redis_url,
        database_url=db_url,
        secret_key="test-only-secret",
        env={
            "HYPERBENCH_DATASET_ROOTS": str(roots["datasets"]),
            "HYPERBENCH_ARTIFACT_ROOTS": str(roots["artifacts"]),
            "HYPERBENCH_ARTIFACTS_URI": roots["artifacts"].as_uri() + "/",
            "HYPERBENCH_HEARTBEAT_S": "2",
            "HYPERBENCH_GPU_WAIT_S": "4",
            "HYPERBENCH_GPU_RETRY_S": "1",
            "HB_TEST_OPENAI_KEY": "sk-test-not-a-secret",
            "HYPERBENCH_STALE_SHARD_S": "3",
            "HYPERBENCH_RECONCILE_S": "1",
            "HYPERBENCH_HOST_SILENT_S": "5",
        },
    )
    stack.start(("control", "host"))
    try:
        stack.wait_workers(("control", "host"), timeout_s=90)
        yield stack
    finally:
        stack.stop(("control", "host"))


@pytest.fixture
def platform(
    settings: Any, transactional_db: None, workers: Stack, roots: dict[str, Path], images: dict[str, str]
) -> Stack:
    """The web side configured like the workers: same roots, committed transactions, system images
    pinned to the ids of the images built here."""
    settings.HYPERBENCH_EVAL_IMAGE = f"hyperbench/eval:{IMAGE_VERSION}"
    settings.HYPERBENCH_EVAL_IMAGE_DIGEST = images["eval"]
    settings.HYPERBENCH_REPORT_IMAGE = f"hyperbench/report:{IMAGE_VERSION}"
    settings.HYPERBENCH_REPORT_IMAGE_DIGEST = images["report"]
    settings.HYPERBENCH_DATASET_ROOTS = [roots["datasets"]]
    settings.HYPERBENCH_ARTIFACTS_URI = roots["artifacts"].as_uri() + "/"
    settings.HYPERBENCH_CONTAINER_TIMEOUT_S = 300
    settings.HYPERBENCH_CONTAINER_MEMORY_MB = 2048
    return workers


# --- story fixtures: an owner, a teammate, an outsider, and staff -------------------------


def _user(username: str, *, staff: bool = False) -> AbstractUser:
    user = get_user_model().objects.create_user(username=username, password="pw-" + username, is_staff=staff)
    return user  # type: ignore[return-value]


def _client(user: AbstractUser) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def alice(db: None) -> AbstractUser:
    """The owner of the experiments in a story."""
    return _user("alice")


@pytest.fixture
def bob(db: None) -> AbstractUser:
    """Alice's teammate; not staff, owns nothing of hers."""
    return _user("bob")


@pytest.fixture
def staff(db: None) -> AbstractUser:
    return _user("root-admin", staff=True)


@pytest.fixture
def as_alice(alice: AbstractUser) -> APIClient:
    return _client(alice)


@pytest.fixture
def as_bob(bob: AbstractUser) -> APIClient:
    return _client(bob)


@pytest.fixture
def as_staff(staff: AbstractUser) -> APIClient:
    return _client(staff)


def wait_for_run(client: APIClient, run_id: int, timeout_s: float = 600) -> dict[str, Any]:
    """Poll the API until the run ends; return its JSON."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = client.get(f"/api/v1/runs/{run_id}/").json()
        if data["state"] in ("succeeded", "failed", "cancelled"):
            return dict(data)
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish in {timeout_s}s; last state {data['state']}")


# --- the API steps of a run, shared by the end-to-end tests ---------------------------------


def register_model(client: APIClient, name: str, image: str, digest: str) -> None:
    r = client.post("/api/v1/models/", {"name": name, "image": image, "digest": digest}, format="json")
    assert r.status_code == 201, r.content


def register_dataset(client: APIClient, path: Path) -> dict[str, Any]:
    r = client.post("/api/v1/datasets/", {"uri": path.as_uri() + "/"}, format="json")
    assert r.status_code == 201, r.content
    return dict(r.json())


def create_experiment(
    client: APIClient, model: str, dataset_id: int, params: dict[str, Any] | None = None, name: str = ""
) -> int:
    body = {"name": name or f"{model} test", "model": model, "dataset": dataset_id, "params": params or {}}
    r = client.post("/api/v1/experiments/", body, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def start_run(client: APIClient, experiment_id: int, shards: int = 1) -> int:
    r = client.post("/api/v1/runs/", {"experiment": experiment_id, "shards": shards}, format="json")
    assert r.status_code == 201, r.content
    return int(r.json()["id"])


def echo_dataset(
    staff: APIClient, owner: APIClient, images: dict[str, str], ds: Path, *, count: int, seed: int
) -> int:
    """A sample dataset of ``count`` documents and the fast ``echo`` model (testkit); the dataset's id."""
    load_script("make_sample_dataset").write_dataset(ds, count, seed)
    register_model(staff, "echo", f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
    return int(register_dataset(owner, ds)["id"])
