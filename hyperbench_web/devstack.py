"""Start and stop the one-machine stack: web, control worker, host worker, Flower.

Used by ``make demo`` / ``make stop`` and by the integration tests (which start
their own workers against their own Redis and database). Each process gets a
pid file and a log under ``<var>/run`` and ``<var>/log``. Stdlib only: this
module must not import Django, so it can start a host worker with a clean
environment.

    python -m hyperbench_web.devstack start|stop|status
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
ALL = ("web", "control", "host", "flower")


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

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    def _env(self, *, django: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
        env.update(self.env)
        env["HYPERBENCH_VAR_DIR"] = str(self.var_dir)
        env["CELERY_BROKER_URL"] = self.broker_url
        env["PYTHONUNBUFFERED"] = "1"
        if django:
            env["DJANGO_SETTINGS_MODULE"] = "hyperbench_web.settings"
            if self.database_url:
                env["DATABASE_URL"] = self.database_url
            if self.secret_key:
                env["SECRET_KEY"] = self.secret_key
        else:
            # The host worker: no Django, no DB. Celery would switch its Django
            # fix-up on from DJANGO_SETTINGS_MODULE alone, so it must be absent.
            for k in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "SECRET_KEY"):
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
        if name == "control":
            return [
                celery,
                "-A",
                "hyperbench_web.celery",
                "worker",
                "-Q",
                "control",
                "-n",
                "control@%h",
                "--concurrency",
                "2",
                "--loglevel",
                "INFO",
                # The reconciler's beat runs inside the one control worker (run exactly one with -B).
                "-B",
                "-s",
                str(self.run_dir / "celerybeat-schedule"),
            ], True
        if name == "host":
            return [
                celery,
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "cpu,gpu",
                "-n",
                "host@%h",
                "--concurrency",
                "1",
                "--loglevel",
                "INFO",
            ], False
        if name == "flower":
            cmd = [
                celery,
                "-A",
                "worker.celery_app",
                "flower",
                f"--port={self.flower_port}",
                "--address=127.0.0.1",
            ]
            if self.flower_auth:
                cmd.append(f"--basic-auth={self.flower_auth}")
            return cmd, False
        raise ValueError(f"unknown process {name!r}")

    def pid(self, name: str) -> int | None:
        try:
            pid = int((self.run_dir / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(self, names: Iterable[str] = ALL) -> dict[str, int]:
        """Start the named processes that are not running; return their pids."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        pids: dict[str, int] = {}
        for name in names:
            running = self.pid(name)
            if running:
                pids[name] = running
                continue
            cmd, django = self.command(name)
            log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
            proc = subprocess.Popen(
                cmd,
                cwd=REPO,
                env=self._env(django=django),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            (self.run_dir / f"{name}.pid").write_text(str(proc.pid))
            pids[name] = proc.pid
        return pids

    def stop(self, names: Iterable[str] = ALL, timeout_s: float = 20) -> list[str]:
        """Stop the named processes (their whole process group); return what was stopped."""
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

    def wait_workers(self, names: Iterable[str] = ("control", "host"), timeout_s: float = 60) -> None:
        """Block until each worker's log says it is ready, or raise with the log tail."""
        deadline = time.monotonic() + timeout_s
        for name in names:
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
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("names", nargs="*", default=list(ALL))
    args = parser.parse_args(argv)
    stack = Stack(broker_url=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"))
    if args.action == "start":
        print(stack.start(args.names))
    elif args.action == "stop":
        stopped = stack.stop(args.names)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    else:
        for name in args.names:
            pid = stack.pid(name)
            print(f"{name:8} {'running pid ' + str(pid) if pid else 'stopped'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
