"""The compose stack as people run it (docker/compose.yml): one beat, Flower behind its login, check --deploy.

- The reconciler's beat is a service of its own, exactly one, and no worker runs ``-B``.
- Flower runs through docker/web/hyperbench_flower.py: started here for real (against the
  suite's Redis), every page it serves answers 401 without the login, /metrics and
  /healthcheck included, and it refuses to start without a login at all.
- ``manage.py check --deploy --fail-level WARNING`` runs in a subprocess with exactly the
  environment the compose file gives the web service (its ``${VAR:-default}`` resolved as
  compose does, the required ones set as the operator would).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yml"
LAUNCHER = ROOT / "docker" / "web" / "hyperbench_flower.py"
pytestmark = pytest.mark.timeout(300)

# What the operator exports before `docker compose up` (docs/operations.md "The compose stack").
OPERATOR_ENV = {
    "SECRET_KEY": secrets.token_hex(32),
    "HYPERBENCH_ADMIN_PASSWORD": "a-long-admin-password",
    "FLOWER_PASSWORD": "a-long-flower-password",
    "HYPERBENCH_EVAL_IMAGE_DIGEST": "sha256:" + "1" * 64,
    "HYPERBENCH_REPORT_IMAGE_DIGEST": "sha256:" + "2" * 64,
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, for the forms the file uses."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        got = env.get(name)
        if op in (":-", "-"):
            return got if got else arg
        if op in (":?", "?"):
            if not got:
                raise AssertionError(f"compose would refuse to start: {name}: {arg}")
            return got
        return got or ""

    return _VAR.sub(sub, value)


def _services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def _service_env(name: str, env: dict[str, str]) -> dict[str, str]:
    raw = _services()[name].get("environment") or {}
    return {k: _interpolate(str(v), env) for k, v in raw.items()}


def _command(service: dict[str, Any]) -> list[str]:
    return [str(part) for part in service.get("command", [])]


# --- beat --------------------------------------------------------------------------------------


def test_beat_is_one_service_of_its_own_and_no_worker_embeds_it() -> None:
    services = _services()
    beats = [name for name, s in services.items() if "beat" in _command(s)]
    assert beats == ["beat"], beats
    beat = services["beat"]
    cmd = _command(beat)
    assert cmd[:4] == ["celery", "-A", "hyperbench_web.celery", "beat"], cmd
    # The beat sends the control app's schedule (settings.CELERY_BEAT_SCHEDULE): it needs the web settings.
    assert beat["environment"] == services["web"]["environment"]
    # A fixed container name: compose refuses `--scale beat=2`; no replicas setting asks for more.
    assert beat.get("container_name")
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    for name, service in services.items():
        cmd = _command(service)
        if "worker" in cmd:
            assert "-B" not in cmd, (name, cmd)
            assert "--beat" not in cmd, (name, cmd)
    control = _command(services["control"])
    assert "worker" in control, control
    assert "control" in control[control.index("-Q") + 1].split(","), control


def test_the_beat_schedule_sends_the_reconciler_to_the_control_queue() -> None:
    env = {**_base_env(), **_service_env("beat", OPERATOR_ENV)}
    code = (
        "from hyperbench_web.celery import app;"
        "s = app.conf.beat_schedule['reconcile'];"
        "print(s['task'], s['options']['queue'], s['schedule'])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["hyperbench.control.reconcile", "control", "10.0"]


# --- Flower ------------------------------------------------------------------------------------


def _flower(
    redis_url: str, *extra: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cmd = [sys.executable, str(LAUNCHER), "-A", "worker.celery_app", "--broker", redis_url, "flower",
           f"--port={port}", "--address=127.0.0.1", *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**_base_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
    return proc.stdout.read() if proc.stdout else ""


def _flower_env(**operator: str) -> dict[str, str]:
    """The flower service's environment from the compose file, on top of the image's own ENV."""
    env = _service_env("flower", {**OPERATOR_ENV, **operator})
    env.pop("CELERY_BROKER_URL")  # the suite's Redis instead (--broker)
    return {"DJANGO_SETTINGS_MODULE": "hyperbench_web.settings", **env}  # the image sets the former


@pytest.fixture
def flower(redis_url: str) -> Iterator[str]:
    """Flower as the compose stack starts it: through the launcher, with the service's environment."""
    proc, url = _flower(redis_url, env=_flower_env(FLOWER_PASSWORD="flower-pw"))
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, _stop(proc)[-3000:]
            try:
                requests.get(url + "/healthcheck", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        else:
            pytest.fail("Flower did not listen within 60 s: " + _stop(proc)[-3000:])
        yield url
    finally:
        _stop(proc)


# Every kind of page Flower serves: the UI, its data tables, the API (read and control), the
# Prometheus metrics, the health check, the static files, the login page, unknown paths.
FLOWER_PATHS = [
    "/",
    "/workers",
    "/tasks",
    "/tasks/datatable",
    "/broker",
    "/api/workers",
    "/api/tasks",
    "/api/queues/length",
    "/metrics",
    "/healthcheck",
    "/static/css/flower.css",
    "/login",
    "/no-such-page",
]


def test_every_page_flower_serves_needs_the_login_metrics_included(flower: str) -> None:
    for path in FLOWER_PATHS:
        anon = requests.get(flower + path, timeout=30, allow_redirects=False)
        assert anon.status_code == 401, (path, anon.status_code, anon.text[:200])
        assert anon.headers.get("WWW-Authenticate", "").startswith("Basic"), path
        wrong = requests.get(flower + path, auth=("admin", "wrong"), timeout=30, allow_redirects=False)
        assert wrong.status_code == 401, path
    post = requests.post(flower + "/api/worker/shutdown/control@x", timeout=30)
    assert post.status_code in (401, 403), post.status_code
    # With the login: what a person and a Prometheus scraper (basic_auth in its config) get.
    metrics = requests.get(flower + "/metrics", auth=("admin", "flower-pw"), timeout=30)
    assert metrics.status_code == 200
    assert "flower_" in metrics.text
    assert requests.get(flower + "/", auth=("admin", "flower-pw"), timeout=30).status_code == 200
    assert requests.get(flower + "/healthcheck", auth=("admin", "flower-pw"), timeout=30).text == "OK"
    css = requests.get(flower + "/static/css/flower.css", auth=("admin", "flower-pw"), timeout=30)
    assert css.status_code == 200


def test_flower_refuses_to_start_without_a_login(redis_url: str) -> None:
    env = _flower_env()
    del env["FLOWER_BASIC_AUTH"]
    proc, url = _flower(redis_url, env=env)
    try:
        rc = proc.wait(timeout=60)
    finally:
        out = _stop(proc)
    assert rc != 0, out[-2000:]
    assert "Flower needs a login" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/metrics", timeout=2)


def test_the_compose_flower_runs_the_launcher_with_its_login_from_the_environment() -> None:
    flower = _services()["flower"]
    cmd = _command(flower)
    assert cmd[:2] == ["python", "/app/hyperbench_flower.py"], cmd
    assert "flower" in cmd, cmd
    assert not any(part.startswith("--basic-auth") for part in cmd), "the password would show in ps"
    env = _service_env("flower", OPERATOR_ENV)
    assert env["FLOWER_BASIC_AUTH"] == "admin:" + OPERATOR_ENV["FLOWER_PASSWORD"]
    assert env["DJANGO_SETTINGS_MODULE"] == ""  # Flower needs no Django settings (nor SECRET_KEY)
    with pytest.raises(AssertionError, match="FLOWER_PASSWORD"):
        _service_env("flower", {})  # compose refuses to start the stack without a Flower password
    dockerfile = (ROOT / "docker" / "web" / "Dockerfile").read_text()
    assert "COPY docker/web/hyperbench_flower.py /app/hyperbench_flower.py" in dockerfile


# --- manage.py check --deploy ---------------------------------------------------------------------


def _base_env() -> dict[str, str]:
    """A clean process environment: no variable of the test run's own leaks into the check."""
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["DJANGO_SETTINGS_MODULE"] = "hyperbench_web.settings"
    env["PYTHONPATH"] = str(ROOT)
    return env


def _check_deploy(
    *extra: str, env_overrides: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**_base_env(), **_service_env("web", OPERATOR_ENV), **(env_overrides or {})}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING", *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_the_compose_web_settings_are_what_check_deploy_asks_for() -> None:
    env = _service_env("web", OPERATOR_ENV)
    assert env["DEBUG"].lower() == "false"
    assert env["HYPERBENCH_HTTPS"] == "true"
    proc = _check_deploy("--tag", "security")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues (1 silenced)" in proc.stdout, proc.stdout


def test_check_deploy_is_clean_under_the_compose_settings() -> None:
    proc = _check_deploy()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "System check identified no issues" in proc.stdout


def test_plain_http_on_loopback_still_works_outside_compose() -> None:
    """The one-machine demo (no HYPERBENCH_HTTPS): no redirect to https, no secure-only cookies."""
    code = (
        "import django; django.setup(); from django.conf import settings as s;"
        "print(s.SECURE_SSL_REDIRECT, s.SESSION_COOKIE_SECURE, s.CSRF_COOKIE_SECURE, s.SECURE_HSTS_SECONDS,"
        " getattr(s, 'SECURE_PROXY_SSL_HEADER', None))"
    )
    env = {**_base_env(), "SECRET_KEY": "x" * 50}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False", "False", "False", "0", "None"]
    # And behind the proxy, what each setting turns into (each one can still be set on its own).
    env.update(HYPERBENCH_HTTPS="true", SECURE_HSTS_SECONDS="600")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[:4] == ["True", "True", "True", "600"]
    assert "HTTP_X_FORWARDED_PROTO" in proc.stdout
