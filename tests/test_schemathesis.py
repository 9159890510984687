"""schemathesis against the live OpenAPI schema, as a staff user and as a non-staff user.

Every check (``--checks all``) and every phase (examples, coverage, fuzzing, stateful, with the
links the schema declares, apps/api/schema.py) runs against ``live_server``; the suite passes
only with zero failures. The configuration is ``tests/schemathesis.toml``: the example budget
(small, derandomized with a fixed seed, so ``make test`` stays in CI time) and the operations
whose valid-looking input may name something that does not exist (their 400 is accepted by
``positive_data_acceptance``).

Nothing reaches a host worker: the Celery app the web side sends with is replaced by a recorder,
so a run the fuzzer starts (or cancels) stays a row in the test database.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.authtoken.models import Token

from apps.catalog.models import Dataset, ModelImage
from apps.hosts.models import Host
from apps.runs.models import Experiment

HERE = Path(__file__).parent
CONFIG = HERE / "schemathesis.toml"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Thousands of 4xx answers are the point here, not news for the log."""
    caplog.set_level(logging.ERROR, logger="django.request")
    caplog.set_level(logging.ERROR, logger="django.server")


@pytest.fixture
def fake_celery(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    """What the web side would send to the hosts, recorded instead of sent."""
    app = mock.MagicMock(name="celery")
    monkeypatch.setattr("apps.runs.dispatch._celery", lambda: app)
    return app


def _seed(username: str, *, staff: bool) -> str:
    """A user with a token, owning an experiment on a registered model and dataset version."""
    user = get_user_model().objects.create_user(username=username, password="pw-" + username, is_staff=staff)
    dataset, _ = Dataset.objects.get_or_create(
        name="fuzz",
        version="1",
        defaults={
            "task": "ocr",
            "source_uri": "file:///nonexistent/fuzz/1/",
            "manifest_sha256": "a" * 64,
            "sample_count": 4,
        },
    )
    model, _ = ModelImage.objects.get_or_create(
        name="fuzz-model", defaults={"image": "hyperbench/fuzz:0", "digest": "sha256:" + "b" * 64}
    )
    Experiment.objects.create(name=f"{username}'s", model=model, dataset=dataset, owner=user)
    Host.objects.get_or_create(name="fuzz-host", defaults={"last_seen": timezone.now()})
    return Token.objects.create(user=user).key


def _schemathesis(base: str, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "run",
        f"{base}/api/schema/",
        "--url",
        base,
        "--header",
        f"Authorization: Token {token}",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
    ]
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_HOOKS": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.mark.parametrize("staff", [False, True], ids=["user", "staff"])
def test_schemathesis_finds_nothing(
    live_server: Any, fake_celery: mock.MagicMock, tmp_path: Path, staff: bool
) -> None:
    token = _seed("fuzz-staff" if staff else "fuzz-user", staff=staff)
    started = time.monotonic()
    done = _schemathesis(live_server.url, token, tmp_path / "junit.xml")
    took = time.monotonic() - started
    out = tmp_path / "schemathesis.txt"
    out.write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (
        f"schemathesis failed after {took:.0f}s (all of it: {out}):\n{done.stdout[-20000:]}"
    )
