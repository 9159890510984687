"""Fixtures: real Redis, real Docker, real Celery workers as separate processes.

A part the suite needs that cannot be started makes the test fail with the
reason, never skip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import docker
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.http import StreamingHttpResponse
from django.test import TransactionTestCase
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from s3_fixtures import s3_proxy, s3_server, session_proxy  # noqa: F401 - the S3 server fixtures

from hyperbench_web.devstack import REPO, Stack

IMAGE_VERSION = (REPO / "images" / "VERSION").read_text().strip()


# A test that reaches the database, by any of pytest-django's doors: `make test` runs these
# again on PostgreSQL (-m uses_db), so none is left out by a hand-kept list.
DB_FIXTURES = frozenset({"db", "transactional_db", "django_db_setup", "live_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & DB_FIXTURES or item.get_closest_marker("django_db") is not None:
            item.add_marker(pytest.mark.uses_db)


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the suite's own on a free loopback port, with an append-only file, so a
    restart (a fault test) keeps the queued messages as a production Redis with AOF does."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed; run `make test` (scripts/bootstrap.sh installs it).")
        self.binary, self.workdir, self.port = binary, workdir, free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"redis-server did not start on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean shutdown writes the append-only file out
            self.proc.wait(timeout=10)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The suite's own Redis (no crosstalk with a running demo)."""
    return redis_server.url


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
    for name in (
        "ocr-rapidocr",
        "table-rapidtable",
        "doc-rapid",
        "eval",
        "report",
        "testkit",
        "probe",
        "vlm-openai",
    ):
        ref = f"hyperbench/{name}:{IMAGE_VERSION}"
        try:
            found[name] = str(docker_client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            pytest.fail(f"image {ref} is missing; build it with `make images`.")
    return found


def load_script(name: str) -> ModuleType:
    path = REPO / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
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
            # An event the control worker held when it was killed comes back after this long.
            "CELERY_CONTROL_VISIBILITY_TIMEOUT_S": "5",
            "HYPERBENCH_UPLOAD_WINDOW_S": "120",
            # Not the machine's name: a demo stack left running on this Docker engine owns those
            # containers, and the two would stop each other's (devstack.py).
            "HYPERBENCH_HOSTNAME": f"hbtest-{os.getpid()}",
        },
    )
    stack.start(("control", "host"))
    try:
        stack.wait_workers(("control", "host"), timeout_s=90)
        yield stack
    finally:
        stack.stop(("control", "host"))


@contextmanager
def _grown(stack: Stack, kind: str, n: int) -> Iterator[Stack]:
    """The session's stack with ``n`` host (``kind="hosts"``) or control workers, the extra ones
    started for the block and stopped after it."""
    setattr(stack, kind, n)
    extra = (stack.host_names if kind == "hosts" else stack.control_names)[1:]
    stack.start(extra)
    try:
        stack.wait_workers(extra, timeout_s=90)
        yield stack
    finally:
        stack.stop(extra)
        setattr(stack, kind, 1)


@pytest.fixture(scope="module")
def cluster(workers: Stack) -> Iterator[Stack]:
    """The session's stack grown to three host workers (host, host2, host3) for a module's tests:
    three hosts as far as the platform knows (own names, caches, work dirs, queues), one engine."""
    with _grown(workers, "hosts", 3) as stack:
        yield stack


@pytest.fixture(scope="module")
def three_controls(workers: Stack) -> Iterator[Stack]:
    """The session's stack with three control workers (control, control2, control3) on the
    control queue for a module's tests: every event goes to whichever is free."""
    with _grown(workers, "controls", 3) as stack:
        yield stack


def wait_hosts(names: list[str], timeout_s: float = 30) -> None:
    """Block until the control side has a live heartbeat of every named host."""
    from apps.hosts.models import Host

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = {h.name for h in Host.objects.filter(name__in=names) if not h.silent}
        if live == set(names):
            return
        time.sleep(0.3)
    raise AssertionError(f"hosts {sorted(set(names) - live)} sent no heartbeat in {timeout_s}s")


@pytest.fixture
def platform(
    settings: Any,
    transactional_db: None,
    workers: Stack,
    roots: dict[str, Path],
    images: dict[str, str],
    request: pytest.FixtureRequest,
) -> Stack:
    """The web side configured like the workers: same roots, committed transactions, system images
    pinned to the ids of the images built here, and a prediction cache of the test's own (a test
    that runs what an earlier one ran must still start its model container)."""
    settings.HYPERBENCH_EVAL_IMAGE = f"hyperbench/eval:{IMAGE_VERSION}"
    settings.HYPERBENCH_EVAL_IMAGE_DIGEST = images["eval"]
    settings.HYPERBENCH_REPORT_IMAGE = f"hyperbench/report:{IMAGE_VERSION}"
    settings.HYPERBENCH_REPORT_IMAGE_DIGEST = images["report"]
    settings.HYPERBENCH_DATASET_ROOTS = [roots["datasets"]]
    settings.HYPERBENCH_ARTIFACTS_URI = roots["artifacts"].as_uri() + "/"
    settings.HYPERBENCH_CONTAINER_TIMEOUT_S = 300
    settings.HYPERBENCH_CONTAINER_MEMORY_MB = 2048
    own = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    settings.HYPERBENCH_PREDICTION_CACHE_URI = (roots["artifacts"] / "cache" / own).as_uri() + "/"
    return workers


# --- story fixtures: an owner, a teammate, an outsider, and staff -------------------------


def _user(username: str, *, staff: bool = False) -> User:
    user = get_user_model().objects.create_user(username=username, password="pw-" + username, is_staff=staff)
    return user


def _client(user: User) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def alice(db: None) -> User:
    """The owner of the experiments in a story."""
    return _user("alice")


@pytest.fixture
def bob(db: None) -> User:
    """Alice's teammate; not staff, owns nothing of hers."""
    return _user("bob")


@pytest.fixture
def staff(db: None) -> User:
    return _user("root-admin", staff=True)


@pytest.fixture
def as_alice(alice: User) -> APIClient:
    return _client(alice)


@pytest.fixture
def as_bob(bob: User) -> APIClient:
    return _client(bob)


@pytest.fixture
def as_staff(staff: User) -> APIClient:
    return _client(staff)


def _deadlocked(e: BaseException | None) -> bool:
    while e is not None:
        if "deadlock detected" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


_flush_teardown = TransactionTestCase._fixture_teardown  # type: ignore[attr-defined]


def _flush_teardown_retrying(self: TransactionTestCase) -> None:
    """A transactional test's teardown TRUNCATEs every table while the stack's workers (drains,
    heartbeats) still write to the test DB; on PostgreSQL the two can deadlock, and the server
    cancels one side. When it cancels the flush (it rolled back), flush again."""
    for attempt in range(5):
        try:
            _flush_teardown(self)
            return
        except Exception as e:
            if attempt == 4 or not _deadlocked(e):
                raise
            time.sleep(0.5)


TransactionTestCase._fixture_teardown = _flush_teardown_retrying  # type: ignore[attr-defined]


def wait_for_progress(client: APIClient, run_id: int, done: int = 1, timeout_s: float = 90) -> None:
    """Poll the API until the run shows ``done`` predictions or more."""
    deadline = time.monotonic() + timeout_s
    while client.get(f"/api/v1/runs/{run_id}/").json()["progress_done"] < done:
        assert time.monotonic() < deadline, f"run {run_id} never reached {done} predictions"
        time.sleep(0.2)


def kill_worker(stack: Stack, name: str) -> int:
    """``kill -9`` a worker of the stack with its process group (no goodbye); returns its pid."""
    pid = stack.pid(name)
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    return pid


def restart_worker(stack: Stack, name: str, pid: int) -> None:
    """Once the killed worker ``pid`` is gone, keep its log aside and start ``name`` again."""
    while stack.pid(name):
        time.sleep(0.1)
    log = stack.log_dir / f"{name}.log"
    if log.exists():
        log.rename(stack.log_dir / f"{name}.{pid}.{time.time_ns()}.log")
    stack.start((name,))
    stack.wait_workers((name,), timeout_s=90)


def containers_created(client: docker.DockerClient, run_id: int, stage: str, since: float) -> int:
    """How many containers of the run's ``stage`` Docker created since ``since`` (its own events)."""
    filters = {
        "type": "container",
        "event": "create",
        "label": [f"org.hyperbench.run={run_id}", f"org.hyperbench.stage={stage}"],
    }
    return sum(1 for _ in client.events(since=int(since) - 1, until=int(time.time()) + 1, filters=filters))


def transient_retries(run_id: int, stage: str, evaluation: int | None = None) -> list[str]:
    """The transient retries a host reported for the run's ``stage`` (worker/stagekit.py's guard):
    each one started that stage's container once more, which a count of containers allows for."""
    from apps.runs.models import RunEvent

    rows = RunEvent.objects.filter(run_id=run_id, kind="log", stage=stage).values_list("message", "data")
    return [m for m, d in rows if (d or {}).get("retry") and (d or {}).get("evaluation") == evaluation]


def stored_artifact(run_id: int, field: str = "predictions_uri") -> Path:
    """The local file of a run's ``file://`` artifact, from the DB: the API shows where an
    artifact is in the store (``runs/5/predictions.jsonl``), never a path on the server."""
    from urllib.parse import urlparse

    from apps.runs.models import Run

    uri = str(getattr(Run.objects.get(pk=run_id), field))
    assert uri.startswith("file://"), uri
    return Path(urlparse(uri).path)


def streamed(response: object) -> bytes:
    """The body of a streamed answer (a FileResponse); an answer that was not streamed fails."""
    assert isinstance(response, StreamingHttpResponse), response
    return b"".join(response)


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
