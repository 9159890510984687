"""Start and stop the one-machine stack: web, control worker, N host workers, Flower.

Used by ``make demo`` / ``make stop`` and by the integration tests (which start
their own workers against their own Redis and database). Each process gets a
pid file and a log under ``<var>/run`` and ``<var>/log``. Stdlib only: this
module must not import Django, so it can start a host worker with a clean
environment.

Host workers: ``host`` is the machine itself (its hostname, or
``HYPERBENCH_HOSTNAME``; ``<var>/work`` and ``<var>/cache``); with ``--hosts N``,
``host2`` .. ``hostN`` are more hosts as far as the platform knows: their own
``HYPERBENCH_HOSTNAME`` (``<first>-<i>``), node cache, work directory, Celery node
name and queue, sharing this machine's Docker engine and dataset roots. Two stacks on
one Docker engine (the demo's, the test suite's, a benchmark's) must name their hosts
apart: a host sees the containers labelled with its name as its own, and stops those
of runs its own database has ended.

Control workers: ``control`` (which also runs the reconciler's beat) and, with
``--controls N``, ``control2`` .. ``controlN`` on the same ``control`` queue: every
update they make is conditional, so they never apply an event twice.

    python -m hyperbench_web.devstack [--hosts N] [--controls N] start|stop|status [names...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hyperbench_web import envfile

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def control_names(n: int) -> tuple[str, ...]:
    """The devstack's names of ``n`` control workers: ``control``, ``control2``, ... ``control<n>``."""
    return ("control", *(f"control{i}" for i in range(2, max(1, n) + 1)))


def _control_index(name: str) -> int | None:
    if name == "control":
        return 1
    rest = name.removeprefix("control")
    return int(rest) if rest != name and rest.isdigit() and int(rest) >= 2 else None


def host_names(n: int) -> tuple[str, ...]:
    """The devstack's names of ``n`` host workers: ``host``, ``host2``, ... ``host<n>``."""
    return ("host", *(f"host{i}" for i in range(2, max(1, n) + 1)))


def shared_cache_url(broker_url: str) -> str:
    """Django's cache for a stack's processes: the broker's Redis, the database after the
    broker's; the per-process default where the broker is not Redis."""
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss"):
        return "locmemcache://"
    db = parts.path.strip("/")
    return urlunsplit(parts._replace(path=f"/{int(db) + 1 if db.isdigit() else 1}"))


def _host_index(name: str) -> int | None:
    if name == "host":
        return 1
    rest = name.removeprefix("host")
    return int(rest) if rest != name and rest.isdigit() and int(rest) >= 2 else None


@dataclass
class Stack:
    var_dir: Path = REPO / "var"
    broker_url: str = "redis://127.0.0.1:6379/0"
    database_url: str | None = None  # None: the settings' default SQLite under var/
    web_port: int = 8000
    flower_port: int = 5555
    flower_auth: str = ""  # user:password
    secret_key: str = ""
    env: dict[str, str] = field(default_factory=dict)  # extra settings for every process
    hosts: int = 1  # host workers: host, host2, ... (see the module's docstring)
    controls: int = 1  # control workers: control (with the beat), control2, ...
    settings_file: Path | None = None  # default <var>/hyperbench.env (hyperbench_web/envfile.py)

    @property
    def settings_path(self) -> Path:
        return self.settings_file or self.var_dir / "hyperbench.env"

    @property
    def names(self) -> tuple[str, ...]:
        """Every process of this stack, in start order."""
        return ("web", *control_names(self.controls), *host_names(self.hosts), "flower")

    @property
    def host_names(self) -> tuple[str, ...]:
        return host_names(self.hosts)

    @property
    def control_names(self) -> tuple[str, ...]:
        return control_names(self.controls)

    def hostname(self, name: str) -> str:
        """The HYPERBENCH_HOSTNAME of a host worker of this stack."""
        index = _host_index(name)
        if index is None:
            raise ValueError(f"not a host worker: {name!r}")
        first = self.env.get("HYPERBENCH_HOSTNAME") or os.environ.get("HYPERBENCH_HOSTNAME")
        first = first or socket.gethostname()
        return first if index == 1 else f"{first}-{index}"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def _env(self, *, django: bool, host: str = "") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        for k, v in envfile.read(self.settings_path).items():
            env.setdefault(k, v)  # the settings file, under what the environment already says
        env.update(self.env)
        index = _host_index(host) if host else None
        if index is not None and index > 1:
            # Another host as far as the platform knows: its own name, cache and work directory.
            own = self.var_dir / "hosts" / self.hostname(host)
            env["HYPERBENCH_HOSTNAME"] = self.hostname(host)
            env["HYPERBENCH_WORK_DIR"] = str(own / "work")
            env["HYPERBENCH_CACHE_DIR"] = str(own / "cache")
        env["HYPERBENCH_VAR_DIR"] = str(self.var_dir)
        env["CELERY_BROKER_URL"] = self.broker_url
        env["PYTHONUNBUFFERED"] = "1"
        if django:
            env["DJANGO_SETTINGS_MODULE"] = "hyperbench_web.settings"
            # The web's two gunicorn workers share one cache, so a throttle counts every request
            # (with the per-process default each worker would allow its own 10 passwords a minute).
            env.setdefault("CACHE_URL", shared_cache_url(self.broker_url))
            if self.database_url:
                env["DATABASE_URL"] = self.database_url
            if self.secret_key:
                env["SECRET_KEY"] = self.secret_key
        else:
            # The host worker: no Django, no DB. Celery would switch its Django
            # fix-up on from DJANGO_SETTINGS_MODULE alone, so it must be absent.
            for k in (
                "DJANGO_SETTINGS_MODULE",
                "DATABASE_URL",
                "SECRET_KEY",
                "HYPERBENCH_ADMIN_PASSWORD",
                "FLOWER_BASIC_AUTH",
            ):
                env.pop(k, None)
        return env

    def command(self, name: str) -> tuple[list[str], bool]:
        celery = str(VENV_BIN / "celery")
        if name == "web":
            return [
                str(VENV_BIN / "gunicorn"),
                "hyperbench_web.wsgi",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "--workers",
                "2",
                "--timeout",
                "60",
                "--access-logfile",
                "-",
            ], True
        if _control_index(name) is not None:
            cmd = [
                celery,
                *("-A", "hyperbench_web.celery", "worker", "-Q", "control", "-n", f"{name}@%h"),
                *("--concurrency", "2", "--loglevel", "INFO"),
            ]
            if name == "control":
                # The reconciler's beat runs inside the first control worker (exactly one runs -B).
                cmd += ["-B", "-s", str(self.run_dir / "celerybeat-schedule")]
            return cmd, True
        if _host_index(name) is not None:
            # Each host also consumes host.<hostname> (worker/celery_app.py adds it). --statedb keeps
            # the revoked task ids (cancelled runs) across a restart of the worker.
            work = Path(
                self._env(django=False, host=name).get("HYPERBENCH_WORK_DIR") or self.var_dir / "work"
            )
            work.mkdir(parents=True, exist_ok=True)
            return [
                celery,
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "cpu,gpu",
                "-n",
                f"{name}@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
                "--statedb",
                str(work / "celery-worker-state"),
            ], False
        if name == "flower":
            # Through the launcher that puts the login on every page Flower serves, /metrics included
            # (docker/web/hyperbench_flower.py: plain Flower leaves /metrics and /healthcheck open).
            cmd = [
                sys.executable,
                str(REPO / "docker" / "web" / "hyperbench_flower.py"),
                "-A",
                "worker.celery_app",
                "flower",
                f"--port={self.flower_port}",
                "--address=127.0.0.1",
            ]
            auth = self.flower_auth or envfile.read(self.settings_path).get("FLOWER_BASIC_AUTH", "")
            if not auth:
                raise RuntimeError(
                    f"Flower needs a login: set FLOWER_BASIC_AUTH=user:password in {self.settings_path}"
                )
            cmd.append(f"--basic-auth={auth}")
            return cmd, False
        raise ValueError(f"unknown process {name!r}")

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self, names: Iterable[str] | None = None) -> dict[str, int]:
        """Start the named processes that are not running; return their pids.

        Creates the settings file first if it is missing (a secret key, the admin's
        password, Flower's login), so that every process reads the same settings.
        """
        envfile.ensure(self.settings_path, legacy_dir=self.var_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        for name in self.names if names is None else names:
            running = self.pid(name)
            if running:
                pids[name] = running
                continue
            cmd, django = self.command(name)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=self._env(django=django, host=name if _host_index(name) is not None else ""),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
            pids[name] = proc.pid
        return pids

    def stop(self, names: Iterable[str] | None = None, timeout_s: float = 20) -> list[str]:
        """Stop the named processes (their whole process group); return what was stopped.

        Without names: every process of this stack, and every host worker a
        larger stack left running here (``make stop`` after ``make demo HOSTS=3``).
        """
        if names is None:
            found = {
                p.stem
                for p in self.run_dir.glob("*.pid")
                if _host_index(p.stem) is not None or _control_index(p.stem) is not None
            }
            names = [*self.names, *sorted(found - set(self.names))]
        stopped = []
        for name in names:
            pid = self.pid(name)
            if pid:
                _signal_group(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline and self.pid(name):
                    time.sleep(0.2)
                if self.pid(name):
                    _signal_group(pid, signal.SIGKILL)
                stopped.append(name)
            (self.run_dir / f"{name}.pid").unlink(missing_ok=True)
        return stopped

    def wait_workers(self, names: Iterable[str] | None = None, timeout_s: float = 60) -> None:
        """Block until each worker's log says it is ready, or raise with the log tail."""
        deadline = time.monotonic() + timeout_s
        for name in (*self.control_names, *self.host_names) if names is None else names:
            log = self.log_dir / f"{name}.log"
            while True:
                text = log.read_text(errors="replace") if log.exists() else ""
                if " ready." in text:
                    break
                if not self.pid(name) or time.monotonic() > deadline:
                    tail = "\n".join(text.splitlines()[-30:])
                    raise RuntimeError(f"the {name} worker did not become ready; last log lines:\n{tail}")
                time.sleep(0.3)


def _alive(pid: int) -> bool:
    """True if the process runs; a zombie (exited, not yet reaped) counts as gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # our own child, just reaped
    except ChildProcessError:
        pass  # not our child: look it up instead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hosts", type=int, default=1, help="host workers to start (default 1)")
    parser.add_argument("--controls", type=int, default=1, help="control workers to start (default 1)")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("names", nargs="*")
    args = parser.parse_args(argv)
    if args.hosts < 1 or args.controls < 1:
        parser.error("--hosts and --controls must be at least 1")
    var = Path(os.environ.get("HYPERBENCH_VAR_DIR", str(REPO / "var"))).resolve()
    broker = os.environ.get("CELERY_BROKER_URL") or envfile.read(var / "hyperbench.env").get(
        "CELERY_BROKER_URL"
    )
    stack = Stack(
        var_dir=var, broker_url=broker or "redis://127.0.0.1:6379/0", hosts=args.hosts, controls=args.controls
    )
    if args.action == "start":
        print(stack.start(args.names or None))
    elif args.action == "stop":
        stopped = stack.stop(args.names or None)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        for name in args.names or stack.names:
            pid = stack.pid(name)
            print(f"{name:8} {'running pid ' + str(pid) if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
