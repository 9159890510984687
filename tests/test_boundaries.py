"""The host worker stands without Django: a GPU host has no DB and no web code."""

from __future__ import annotations

import os
import subprocess
import sys

from hyperbench_web.devstack import REPO

PROBE = """
import sys
# Make Django (and the web side) unimportable: any import of them raises ImportError.
for name in ("django", "rest_framework", "apps", "hyperbench_web"):
    sys.modules[name] = None
import worker.tasks, worker.stagekit, worker.inference, worker.systemstages
import worker.containers, worker.datasync, worker.storage, worker.gpus, worker.manifest
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("django", "apps", "hyperbench_web")
                and sys.modules[m] is not None)
print("LOADED", loaded)
"""


def test_the_host_worker_imports_with_django_absent() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout


def test_the_host_worker_celery_app_has_no_django_fixup() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    code = "from worker.celery_app import app; print('FIXUPS', [type(f).__name__ for f in app._fixups if f])"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FIXUPS []" in proc.stdout
