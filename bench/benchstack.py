"""The stack a benchmark runs on, written once for bench/recovery.py, reuse.py and control.py.

Each bench gets a Redis of its own on a free loopback port, the web app on another, the
real workers as separate processes (``hyperbench_web.devstack.Stack``) under
``var/bench/<name>``, and an API token. ``FileStack`` is the one-machine default
(SQLite, ``file://`` datasets and artifacts, the system images pinned by digest);
bench/control.py builds its PostgreSQL stack from the same parts.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import requests

from hyperbench_web.devstack import REPO, Stack

VERSION = (REPO / "images" / "VERSION").read_text().strip()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int) -> subprocess.Popen[bytes]:
    """A Redis of the bench's own, without persistence (nothing outlives the bench)."""
    return subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )


def wait_web(base: str, headers: dict[str, str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(base + "/api/v1/", headers=headers, timeout=3).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the bench's web app did not answer")
        time.sleep(0.5)


class Parts:
    """The ports, the Redis and the Stack of one bench; ``stop`` ends what was started."""

    def __init__(self, name: str) -> None:
        self.var: Path = REPO / "var" / "bench" / name
        self.redis_port, self.web_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.web_port}"
        self.broker = f"redis://127.0.0.1:{self.redis_port}/0"
        self.headers: dict[str, str] = {}
        self.redis: subprocess.Popen[bytes] | None = None
        self.stack: Stack | None = None

    def reset_var(self, *subdirs: str) -> None:
        """An empty var dir (and subdirs) that the containers' user can read."""
        shutil.rmtree(self.var, ignore_errors=True)
        self.var.mkdir(parents=True)
        for d in (self.var, *(self.var / s for s in subdirs)):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)

    def start_redis(self) -> None:
        self.redis = start_redis(self.redis_port)

    def api(self, method: str, path: str, **kw: Any) -> Any:
        r = requests.request(method, self.base + path, headers=self.headers, timeout=30, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:500]}")
        return r.json()

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop()
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)


class FileStack(Parts):
    """SQLite, ``file://`` datasets and artifacts under the var dir, ``hosts`` host workers, a
    control worker and the web app (no Flower), the eval and report images pinned by digest,
    and a staff user ``bench`` whose token is in ``headers``."""

    def __init__(self, name: str, *, hosts: int = 1) -> None:
        super().__init__(name)
        self.hosts = hosts
        self.engine = docker.from_env(timeout=30)

    def image_id(self, name: str) -> str:
        return str(self.engine.images.get(f"hyperbench/{name}:{VERSION}").id)

    def start(self) -> None:
        self.reset_var("datasets", "artifacts")
        self.start_redis()
        var = self.var
        env = {
            "HYPERBENCH_VAR_DIR": str(var),
            "HYPERBENCH_DATASET_ROOTS": str(var / "datasets"),
            "HYPERBENCH_ARTIFACT_ROOTS": str(var / "artifacts"),
            "HYPERBENCH_ARTIFACTS_URI": (var / "artifacts").as_uri() + "/",
            "HYPERBENCH_EVAL_IMAGE": f"hyperbench/eval:{VERSION}",
            "HYPERBENCH_EVAL_IMAGE_DIGEST": self.image_id("eval"),
            "HYPERBENCH_REPORT_IMAGE": f"hyperbench/report:{VERSION}",
            "HYPERBENCH_REPORT_IMAGE_DIGEST": self.image_id("report"),
            "HYPERBENCH_API_THROTTLE_USER": "100000/minute",
            # Not the machine's name: the demo's stack may run beside the bench (devstack.py).
            "HYPERBENCH_HOSTNAME": f"bench-{self.var.name}",
        }
        secret, db = secrets.token_urlsafe(24), f"sqlite:///{var / 'bench.sqlite3'}"
        self.stack = Stack(
            var_dir=var,
            broker_url=self.broker,
            database_url=db,
            web_port=self.web_port,
            secret_key=secret,
            env=env,
            hosts=self.hosts,
        )
        menv = {
            **os.environ,
            **env,
            "DJANGO_SETTINGS_MODULE": "hyperbench_web.settings",
            "SECRET_KEY": secret,
            "DATABASE_URL": db,
        }
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "--noinput"], cwd=REPO, env=menv, check=True, capture_output=True)
        out = subprocess.run(
            [*manage, "ensure_admin", "--username", "bench"],
            cwd=REPO,
            env={**menv, "HYPERBENCH_ADMIN_PASSWORD": "bench-pw"},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.headers = {"Authorization": f"Token {out.strip().splitlines()[-1]}"}
        self.stack.start([n for n in self.stack.names if n != "flower"])
        self.stack.wait_workers(timeout_s=120)
        wait_web(self.base, self.headers)
