"""The control plane's image (docker/web/Dockerfile) and its compose stack (docker/compose.yml).

The image test runs the real image under the same hardening as the model
containers (no network, read-only root, non-root user): the checks pass, the
migrations apply, gunicorn serves the admin login page with its static files.
The compose file is read as data: no service may get the Docker socket, every
published port is bound to loopback, the host worker is not a service, and beat
is one of its own. Flower, started in the image as the compose file starts it,
asks for its login on every page (tests/test_deploy_stack.py has the rest).
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import docker
import pytest
import yaml

from tests.conftest import IMAGE_VERSION

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yml"

_SMOKE = """
set -e
python manage.py check
python manage.py migrate --noinput -v 0
HYPERBENCH_ADMIN_PASSWORD=long-enough-pw python manage.py ensure_admin --username admin >/dev/null
gunicorn hyperbench_web.wsgi --bind 127.0.0.1:8000 --workers 1 --daemon --pid /tmp/gunicorn.pid
python - <<'PY'
import time, urllib.request
for _ in range(50):
    try:
        page = urllib.request.urlopen("http://127.0.0.1:8000/admin/login/", timeout=30).read().decode()
        break
    except OSError:
        time.sleep(0.2)
css = urllib.request.urlopen("http://127.0.0.1:8000/static/admin/css/base.css", timeout=30)
api = urllib.request.Request("http://127.0.0.1:8000/api/v1/runs/")
try:
    urllib.request.urlopen(api, timeout=30)
    print("api-open")
except urllib.error.HTTPError as e:
    print("api-status", e.code)
print("login-page" if "csrfmiddlewaretoken" in page else "no-login-form", "css", css.status)
PY
"""


def test_the_web_image_migrates_and_serves_the_admin_under_the_hardened_flags(
    docker_client: docker.DockerClient,
) -> None:
    ref = f"hyperbench/web:{IMAGE_VERSION}"
    try:
        docker_client.images.get(ref)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {ref} is missing; build it with `make images`.")
    name = f"hb-test-web-{uuid.uuid4().hex[:8]}"
    cmd = [
        "docker", "run", "--rm", "--name", name, "--network", "none", "--read-only",
        "--tmpfs", "/tmp", "--tmpfs", "/var/lib/hyperbench:uid=10001,gid=10001",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--label", "io.hyperbench.test=1",
        "-e", "SECRET_KEY=test-only", ref, "sh", "-c", _SMOKE,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "System check identified no issues" in proc.stdout
    assert "login-page css 200" in proc.stdout, proc.stdout
    assert "api-status 401" in proc.stdout or "api-status 403" in proc.stdout, proc.stdout
    user = docker_client.images.get(ref).attrs["Config"]["User"]
    assert user.split(":")[0] == "10001"


def test_the_compose_stack_never_hands_out_the_docker_socket_and_binds_loopback_only() -> None:
    stack = yaml.safe_load(COMPOSE.read_text())
    services = stack["services"]
    assert {"postgres", "redis", "web", "control", "flower", "migrate"} <= set(services)
    commands = [" ".join(map(str, s.get("command", []))) for s in services.values()]
    assert not any("worker.celery_app worker" in c for c in commands), "the host worker runs on the host"
    for name, service in services.items():
        for volume in service.get("volumes", []):
            assert "docker.sock" not in volume, (name, volume)
        assert not service.get("privileged"), name
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), (name, port)
    for name in ("web", "control", "flower", "migrate"):
        assert services[name]["image"].startswith("hyperbench/web:"), name
    control = " ".join(services["control"]["command"])
    assert "-Q control" in control
    assert "-B" not in control.split()  # beat is its own service
    assert services["beat"]["command"][3] == "beat"


_FLOWER_SMOKE = """
python /app/hyperbench_flower.py -A worker.celery_app --broker redis://127.0.0.1:1/0 flower \
  --port=5555 --address=127.0.0.1 >/tmp/flower.log 2>&1 &
python - <<'PY'
import base64, time, urllib.error, urllib.request
def status(path, auth=None):
    req = urllib.request.Request("http://127.0.0.1:5555" + path)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        return urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        return e.code
for _ in range(100):
    try:
        status("/healthcheck")
        break
    except OSError:
        time.sleep(0.2)
for path in ("/", "/metrics", "/healthcheck", "/api/workers", "/static/css/flower.css"):
    print("flower", path, status(path), status(path, "admin:image-pw"))
PY
"""


def test_the_images_flower_asks_for_the_login_on_every_page_metrics_included(
    docker_client: docker.DockerClient,
) -> None:
    """Flower as the compose file starts it, in the real image (no broker needed to serve pages)."""
    ref = f"hyperbench/web:{IMAGE_VERSION}"
    flower = yaml.safe_load(COMPOSE.read_text())["services"]["flower"]
    assert flower["command"][:2] == ["python", "/app/hyperbench_flower.py"]
    name = f"hb-test-flower-{uuid.uuid4().hex[:8]}"
    cmd = [
        "docker", "run", "--rm", "--name", name, "--network", "none", "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--label", "io.hyperbench.test=1",
        "-e", "DJANGO_SETTINGS_MODULE=", "-e", "FLOWER_BASIC_AUTH=admin:image-pw",
        ref, "sh", "-c", _FLOWER_SMOKE,
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path in ("/", "/metrics", "/healthcheck", "/api/workers", "/static/css/flower.css"):
        assert f"flower {path} 401 200" in proc.stdout, proc.stdout
