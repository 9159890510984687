"""Containers that cannot hurt the host, checked from inside with the real engine.

The probe image (images/probe) runs through the platform's own launcher,
``worker.containers.run``, the host-side code path a shard takes, and reports
what it may do; each finding is asserted here. Then the launcher's failure
handling (OOM, a container that ignores SIGTERM, the sweep of a dead worker's
leftovers), and a property test: no API payload reaches the container options.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.test import Client
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient

from apps.catalog.models import ModelImage
from apps.catalog.services import RegistrationError, model_image_register
from apps.runs.models import Experiment, Run
from apps.runs.services import RunError, run_start
from hyperbench_web.devstack import Stack
from tests.conftest import (
    IMAGE_VERSION,
    create_experiment,
    load_script,
    register_dataset,
    register_model,
    start_run,
    stored_artifact,
    wait_for_run,
)
from tests.test_leaderboard import _dataset
from worker import containers, events, stagekit, tasks
from worker.errors import HostError

MiB = 1024 * 1024
TEST_LABEL = "org.hyperbench.test-id"
PROBE_LIMITS = {"memory_mb": 256, "pids": 128, "tmpfs_mb": 64, "cpus": 1.0}
# What any container may see in /dev: docker's defaults for an unprivileged container.
DEFAULT_DEVICES = {
    "console", "core", "fd", "full", "mqueue", "null", "ptmx", "pts", "random",
    "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero",
}  # fmt: skip
CONTRACT_MOUNTS = {
    "/data": True,
    "/job/input.jsonl": True,
    "/job/params.json": True,
    "/job/output": False,
}  # target -> read-only


# --- helpers ------------------------------------------------------------------------------


def _job(base: Path, params: dict[str, Any]) -> Path:
    """A job directory laid out like the worker's: dataset, input, params, writable output."""
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    data.mkdir()
    (data / "page.png").write_bytes(b"not really a png")
    (base / "input.jsonl").write_text(json.dumps({"id": "s1", "image": "page.png"}) + "\n")
    (base / "params.json").write_text(json.dumps({"params": params, "prompt": "", "task": "ocr"}))
    out = base / "output"
    out.mkdir()
    os.chown(out, stagekit.CONTAINER_UID, stagekit.CONTAINER_UID)
    data.chmod(0o755)  # the bind mount itself needs no traversal of base's parents
    return base


def _contract_mounts(job: Path) -> list[containers.BindMount]:
    return [
        containers.BindMount(job / "data", "/data"),
        containers.BindMount(job / "input.jsonl", "/job/input.jsonl"),
        containers.BindMount(job / "params.json", "/job/params.json"),
        containers.BindMount(job / "output", "/job/output", read_only=False),
    ]


def _spec(image: str, digest: str, job: Path, test_id: str, **overrides: Any) -> containers.ContainerSpec:
    fields: dict[str, Any] = {
        "image": image,
        "digest": digest,
        "mounts": _contract_mounts(job),
        "labels": {TEST_LABEL: test_id, "org.hyperbench.stage": "test"},
        "timeout_s": 60,
        **PROBE_LIMITS,
    }
    fields.update(overrides)
    return containers.ContainerSpec(**fields)


def _labelled(dc: docker.DockerClient, test_id: str) -> list[Any]:
    return list(dc.containers.list(all=True, filters={"label": f"{TEST_LABEL}={test_id}"}))


@pytest.fixture
def test_id(docker_client: docker.DockerClient) -> Iterator[str]:
    """A label value for this test's containers; every one left behind fails the test, then goes."""
    tid = uuid.uuid4().hex
    yield tid
    left = _labelled(docker_client, tid)
    for c in left:
        c.remove(force=True)
    assert not left, f"containers left behind: {[c.short_id for c in left]}"


def _listener() -> socket.socket:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return srv


def _probe(
    base: Path, digest: str, test_id: str, params: dict[str, Any], **overrides: Any
) -> tuple[containers.ContainerResult, dict[str, Any]]:
    job = _job(base, params)
    result = containers.run(
        _spec(f"hyperbench/probe:{IMAGE_VERSION}", digest, job, test_id, **overrides), tick_s=0.5
    )
    assert result.exit_code == 0, result.log_tail
    findings = json.loads((job / "output" / "probe.json").read_text())
    prediction = json.loads((job / "output" / "predictions.jsonl").read_text().splitlines()[0])
    assert json.loads(prediction["prediction"]) == findings  # the contract path carries the same report
    return result, findings


@pytest.fixture(scope="module")
def probe(
    tmp_path_factory: pytest.TempPathFactory, images: dict[str, str], docker_client: docker.DockerClient
) -> dict[str, Any]:
    """The probe's findings under the default hardening, run once for the module.

    The host listens on a loopback port the probe then tries to reach, so a
    refused connect means the container's loopback is not the host's.
    """
    tid = uuid.uuid4().hex
    srv = _listener()
    try:
        _, findings = _probe(
            tmp_path_factory.mktemp("probe"),
            images["probe"],
            tid,
            {"tcp_port": srv.getsockname()[1], "public_addr": "1.1.1.1:53", "forks": 500},
        )
    finally:
        srv.close()
        left = _labelled(docker_client, tid)
        for c in left:
            c.remove(force=True)
    assert not left, "the launcher left the probe's container behind"
    return findings


# --- what the probe finds -----------------------------------------------------------------

docker_test = pytest.mark.docker


@docker_test
def test_the_container_has_no_capabilities_and_cannot_gain_any(probe: dict[str, Any]) -> None:
    assert probe["cap_eff"] == 0
    assert probe["cap_prm"] == 0
    assert probe["cap_bnd"] == 0
    assert probe["cap_amb"] == 0
    assert probe["no_new_privs"] == 1
    assert probe["seccomp"] == 2  # docker's default filter is on
    assert probe["setuid_root"] is False


@docker_test
def test_the_container_runs_as_the_unprivileged_user(probe: dict[str, Any]) -> None:
    assert (probe["uid"], probe["euid"], probe["gid"]) == (10001, 10001, 10001)
    assert 0 not in probe["groups"]


@docker_test
def test_the_root_filesystem_the_dataset_and_the_job_inputs_are_read_only(probe: dict[str, Any]) -> None:
    assert probe["write_root"] == {"writable": False, "error": "EROFS"}
    assert probe["write_data"] == {"writable": False, "error": "EROFS"}
    assert probe["write_job"]["writable"] is False
    assert probe["write_output"] == {"writable": True, "error": None}


@docker_test
def test_tmp_is_a_writable_tmpfs_of_the_configured_size(probe: dict[str, Any]) -> None:
    assert probe["write_tmp"] == {"writable": True, "error": None}
    assert probe["mounts"]["/tmp"]["fstype"] == "tmpfs"
    assert probe["tmp_size_bytes"] == PROBE_LIMITS["tmpfs_mb"] * MiB


@docker_test
def test_the_container_reaches_neither_the_hosts_loopback_nor_the_internet(probe: dict[str, Any]) -> None:
    assert probe["interfaces"] == ["lo"]  # its own loopback, nothing else
    assert probe["tcp_loopback"]["connected"] is False, probe["tcp_loopback"]
    assert probe["tcp_public"]["connected"] is False
    assert probe["tcp_public"]["error"] in ("ENETUNREACH", "EHOSTUNREACH", "ENONET"), probe["tcp_public"]


@docker_test
def test_a_fork_bomb_stops_at_the_pids_limit(probe: dict[str, Any]) -> None:
    assert probe["cgroup"]["pids_max"] == PROBE_LIMITS["pids"]
    assert probe["fork"]["error"] == "EAGAIN"
    assert 0 < probe["fork"]["forked"] < PROBE_LIMITS["pids"] < 500


@docker_test
def test_the_docker_socket_is_nowhere_in_the_container(probe: dict[str, Any]) -> None:
    assert probe["docker_socket"] == []
    assert not [m for m in probe["mounts"] if "docker" in m]


@docker_test
def test_the_memory_limit_is_the_cgroup_limit_with_no_swap(probe: dict[str, Any]) -> None:
    assert probe["cgroup"]["memory_max"] == PROBE_LIMITS["memory_mb"] * MiB
    assert probe["cgroup"]["swap_max"] == 0


@docker_test
def test_the_container_sees_only_its_own_processes(probe: dict[str, Any]) -> None:
    assert probe["visible_pids"] <= 3  # the probe itself (its children are gone by then)


@docker_test
def test_only_the_contract_paths_are_bound_from_the_host(probe: dict[str, Any]) -> None:
    bound = {
        target: m["ro"]
        for target, m in probe["mounts"].items()
        if m["fstype"] not in ("overlay", "tmpfs", "proc", "sysfs", "cgroup", "cgroup2", "mqueue", "devpts")
        and target not in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
    }
    assert bound == CONTRACT_MOUNTS
    assert probe["mounts"]["/"]["ro"] is True


@docker_test
def test_the_container_sees_no_host_devices(probe: dict[str, Any]) -> None:
    assert set(probe["devices"]) <= DEFAULT_DEVICES


@docker_test
def test_the_probe_does_see_a_listener_when_networking_is_granted(
    tmp_path: Path, images: dict[str, str], test_id: str
) -> None:
    # The control for the network finding: the same probe, registered as an API
    # model (host network), reaches the host's listener, so "refused" above is
    # the sandbox and not a broken probe. No outbound attempt here.
    srv = _listener()
    try:
        _, findings = _probe(
            tmp_path,
            images["probe"],
            test_id,
            {"tcp_port": srv.getsockname()[1], "public_addr": "", "forks": 1},
            network=True,
        )
    finally:
        srv.close()
    assert findings["tcp_loopback"] == {"connected": True, "error": None}
    assert findings["cap_eff"] == 0
    assert findings["uid"] == 10001


# --- failures the launcher must turn into reasons ----------------------------------------


@docker_test
def test_a_container_past_its_memory_limit_is_reported_as_out_of_memory(
    tmp_path: Path, images: dict[str, str], test_id: str
) -> None:
    job = _job(tmp_path, {"mode": "oom"})
    spec = _spec(f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"], job, test_id, memory_mb=128)

    result = containers.run(spec, tick_s=0.5)

    assert result.oom_killed is True, (result.exit_code, result.log_tail)
    assert result.exit_code == 137
    assert result.timed_out is False
    reason = containers.describe_failure("Model container testkit", result, spec.timeout_s, 128)
    assert "ran out of memory" in reason
    assert "128 MB" in reason


@docker_test
def test_a_container_that_ignores_sigterm_is_stopped_killed_and_removed_at_its_deadline(
    tmp_path: Path, images: dict[str, str], test_id: str, docker_client: docker.DockerClient
) -> None:
    job = _job(tmp_path, {"mode": "hang"})
    spec = _spec(
        f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"], job, test_id, timeout_s=3, stop_grace_s=1
    )
    since = int(time.time()) - 1

    result = containers.run(spec, tick_s=0.5)

    assert result.timed_out is True
    assert result.exit_code == 137
    assert 3 <= result.duration_s < 30
    assert "ran past its 3s deadline" in containers.describe_failure("m", result, 3, 128)
    # The engine's own record: SIGTERM first, SIGKILL after the grace, then gone.
    seen = [
        (e["Action"], e["Actor"]["Attributes"].get("signal"))
        for e in docker_client.events(
            since=since,
            until=int(time.time()) + 1,
            filters={"type": "container", "label": f"{TEST_LABEL}={test_id}"},
            decode=True,
        )
    ]
    actions = [a for a, _ in seen]
    assert ("kill", "15") in seen, seen
    assert ("kill", "9") in seen, seen
    assert seen.index(("kill", "15")) < seen.index(("kill", "9")) < actions.index("die"), seen
    assert actions[-1] == "destroy", seen
    assert _labelled(docker_client, test_id) == []


@docker_test
def test_the_sweep_removes_a_dead_workers_containers_and_keeps_a_live_ones(
    images: dict[str, str], test_id: str, docker_client: docker.DockerClient
) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    made = {}
    for who, pid in (("dead", gone.pid), ("live", os.getpid())):
        made[who] = docker_client.containers.create(
            images["testkit"],
            labels={
                containers.MANAGED_LABEL: "1",
                f"{containers.LABEL_PREFIX}.worker-pid": str(pid),
                TEST_LABEL: test_id,
            },
            network_mode="none",
        )

    removed = containers.sweep_orphans()

    assert removed >= 1
    left = {c.id for c in _labelled(docker_client, test_id)}
    assert made["dead"].id not in left
    assert made["live"].id in left
    made["live"].remove(force=True)


@docker_test
def test_a_re_pointed_tag_is_refused_before_anything_runs(images: dict[str, str]) -> None:
    with pytest.raises(HostError, match="the tag was re-pointed"):
        containers.resolve_image(f"hyperbench/testkit:{IMAGE_VERSION}", images["eval"])
    assert (
        containers.resolve_image(f"hyperbench/testkit:{IMAGE_VERSION}", images["testkit"])
        == (images["testkit"])
    )


@pytest.mark.parametrize(
    "digest",
    [None, "", "latest", "sha256:abc", "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 64],
)
def test_a_model_without_a_full_image_id_is_not_registered(as_staff: APIClient, digest: str | None) -> None:
    body = {"name": "unpinned", "image": f"hyperbench/testkit:{IMAGE_VERSION}"}
    if digest is not None:
        body["digest"] = digest

    r = as_staff.post("/api/v1/models/", body, format="json")

    assert r.status_code == 400, r.content
    assert "digest" in r.json()
    assert not ModelImage.objects.exists()


def test_the_registration_service_and_the_admin_refuse_an_unpinned_model(client: Client, db: None) -> None:
    with pytest.raises(RegistrationError, match="needs the image id it is pinned to"):
        model_image_register(name="m", image="hyperbench/testkit:latest", digest="hyperbench/testkit:latest")
    client.force_login(get_user_model().objects.create_superuser("admin", password="pw-admin"))
    form = {
        "name": "m",
        "image": "hyperbench/testkit:x",
        "gpus": 0,
        "default_params": "{}",
        "endpoint_max_concurrency": 4,
        "endpoint_timeout_s": 60,
    }
    refused = client.post("/admin/catalog/modelimage/add/", {**form, "digest": ""})
    assert refused.status_code == 200
    assert "Give the image id" in refused.content.decode()
    assert not ModelImage.objects.exists()
    added = client.post("/admin/catalog/modelimage/add/", {**form, "digest": "sha256:" + "c" * 64})
    assert added.status_code == 302, added.content.decode()[:2000]
    pinned = model_image_register(name="m", image="hyperbench/testkit:latest", digest="sha256:" + "d" * 64)
    assert pinned.digest == "sha256:" + "d" * 64


def _experiment_of(alice: User, model: ModelImage) -> Experiment:
    return Experiment.objects.create(name="x", model=model, dataset=_dataset("pinned"), owner=alice)


def test_a_model_row_without_a_digest_never_starts_a_run(alice: User) -> None:
    # A row from before digests were required (or written around the service).
    legacy = ModelImage.objects.create(name="legacy", image="hyperbench/testkit:latest", digest="")

    with pytest.raises(RunError, match="legacy has no pinned image id"):
        run_start(experiment=_experiment_of(alice, legacy), user=alice)

    assert not Run.objects.exists()


@pytest.mark.parametrize("variable", ["HYPERBENCH_EVAL_IMAGE_DIGEST", "HYPERBENCH_REPORT_IMAGE_DIGEST"])
def test_a_run_never_starts_while_a_system_image_is_unpinned(
    alice: User, settings: Any, variable: str
) -> None:
    setattr(settings, variable, "")
    model = ModelImage.objects.create(name="ok", image="hyperbench/testkit:x", digest="sha256:" + "c" * 64)

    with pytest.raises(RunError, match=variable):
        run_start(experiment=_experiment_of(alice, model), user=alice)

    assert not Run.objects.exists()


def test_a_malformed_system_image_pin_stops_the_web_side_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from hyperbench_web import settings as web_settings

    monkeypatch.setenv("HB_TEST_PIN", "hyperbench/eval:latest")
    with pytest.raises(ImproperlyConfigured, match="HB_TEST_PIN must be a full image id"):
        web_settings._image_id("HB_TEST_PIN")
    monkeypatch.setenv("HB_TEST_PIN", "sha256:" + "d" * 64)
    assert web_settings._image_id("HB_TEST_PIN") == "sha256:" + "d" * 64


def test_the_host_refuses_an_image_that_arrives_without_a_pin() -> None:
    # Before any Docker call: an unpinned spec never gets as far as inspecting the tag.
    for unpinned in ("", "latest", "sha256:" + "a" * 12):
        with pytest.raises(HostError, match="without a pinned image id"):
            containers.resolve_image(f"hyperbench/testkit:{IMAGE_VERSION}", unpinned)


@docker_test
@pytest.mark.parametrize(("stage", "pinned_to"), [("evaluate", "report"), ("report", "eval")])
def test_a_run_fails_when_a_system_image_differs_from_its_pin(
    platform: Stack,
    settings: Any,
    as_staff: APIClient,
    as_alice: APIClient,
    sample_dataset: Path,
    images: dict[str, str],
    stage: str,
    pinned_to: str,
) -> None:
    # The eval (or report) tag on the host no longer names the pinned image: as if re-pointed.
    system = "eval" if stage == "evaluate" else "report"
    setattr(settings, f"HYPERBENCH_{system.upper()}_IMAGE_DIGEST", images[pinned_to])
    model = {"name": "echo", "image": f"hyperbench/testkit:{IMAGE_VERSION}", "digest": images["testkit"]}
    assert as_staff.post("/api/v1/models/", model, format="json").status_code == 201
    ds = as_alice.post("/api/v1/datasets/", {"uri": sample_dataset.as_uri() + "/"}, format="json").json()
    exp = as_alice.post(
        "/api/v1/experiments/", {"name": "pins", "model": "echo", "dataset": ds["id"]}, format="json"
    ).json()
    run = as_alice.post("/api/v1/runs/", {"experiment": exp["id"]}, format="json")
    assert run.status_code == 201, run.content
    assert run.json()["id"]
    assert Run.objects.get().spec[f"{system}_image"]["digest"] == images[pinned_to]

    data = wait_for_run(as_alice, run.json()["id"], timeout_s=300)

    assert data["state"] == "failed"
    assert data["error_reason"].startswith(f"{stage} failed on"), data["error_reason"]
    assert f"hyperbench/{system}:{IMAGE_VERSION}" in data["error_reason"]
    assert "the tag was re-pointed" in data["error_reason"]


# --- no API payload widens the container options ----------------------------------------

ALLOWED_OPTIONS = {
    "image", "detach", "user", "network_mode", "cap_drop", "security_opt", "read_only", "tmpfs",
    "mem_limit", "memswap_limit", "pids_limit", "nano_cpus", "mounts", "labels", "environment",
    "device_requests", "ipc_mode",
}  # fmt: skip
EVIL_KEYS = [
    "image", "digest", "mounts", "devices", "privileged", "network_mode", "network", "cap_add",
    "environment", "volumes", "binds", "user", "security_opt", "pid_mode", "ipc_mode", "labels",
    "command", "entrypoint", "tmpfs", "pids_limit", "mem_limit", "requires_gpu", "gpus", "runtime",
]  # fmt: skip
_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_evil_values = (
    st.sampled_from(
        [
            "/var/run/docker.sock:/var/run/docker.sock",
            {"/": {"bind": "/host", "mode": "rw"}},
            ["/dev/nvidia0", "/dev/kvm"],
            ["SYS_ADMIN", "ALL"],
            "host",
            "0:0",
            "root",
            True,
            ["sh", "-c", "cat /etc/shadow"],
        ]
    )
    | _json
)
# Extra fields must be refused; the same payload without them must then pass the
# API and reach the host worker, where params that look like options are only data.
_evil = st.dictionaries(st.sampled_from(EVIL_KEYS), _evil_values, max_size=3)
_params_dict = st.dictionaries(st.sampled_from(EVIL_KEYS) | _text, _evil_values, max_size=4)
_valid_shards = st.integers(1, 3)


@pytest.fixture
def api_world(
    as_staff: APIClient,
    as_alice: APIClient,
    settings: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Two registered models (one an API model with egress), a dataset, and a host worker config."""
    root = (tmp_path / "datasets").resolve()
    settings.HYPERBENCH_DATASET_ROOTS = [root]
    settings.HYPERBENCH_ARTIFACTS_URI = (tmp_path / "artifacts").as_uri() + "/"
    ds = root / "docs" / "1"
    load_script("make_sample_dataset").write_dataset(ds, 3, 5)
    dataset = as_alice.post("/api/v1/datasets/", {"uri": ds.as_uri() + "/"}, format="json")
    assert dataset.status_code == 201, dataset.content
    for name, network in (("plain", False), ("egress", True)):
        body = {"name": name, "image": f"hyperbench/testkit:{IMAGE_VERSION}", "digest": "sha256:" + "a" * 64}
        r = as_staff.post("/api/v1/models/", {**body, "network": network}, format="json")
        assert r.status_code == 201, r.content
    monkeypatch.setenv("HYPERBENCH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("HYPERBENCH_DATASET_ROOTS", str(root))
    monkeypatch.setenv("HYPERBENCH_ARTIFACT_ROOTS", str(tmp_path / "artifacts"))
    return {"dataset": dataset.json()["id"], "root": root, "work": (tmp_path / "var" / "work").resolve()}


class _Captured(Exception):
    pass


def _worker_spec(spec: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> containers.ContainerSpec:
    """The ContainerSpec the host worker's infer task builds for a run spec (the run itself is skipped)."""
    captured: list[containers.ContainerSpec] = []
    failures: list[str] = []

    def fake_run(cspec: containers.ContainerSpec, **_: Any) -> containers.ContainerResult:
        captured.append(cspec)
        raise _Captured

    def fake_emit(run_id: int, kind: str, stage: str, **fields: Any) -> None:
        if kind == "failed" and "_Captured" not in str(fields.get("reason")):
            failures.append(str(fields.get("reason")))

    monkeypatch.setattr(containers, "run", fake_run)
    monkeypatch.setattr(events, "emit", fake_emit)
    tasks.infer_shard({"spec": spec, "shard": 0, "attempt": 1})
    assert len(captured) == 1, failures
    return captured[0]


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    # Repeated branches weight the draw towards payloads that get through.
    model=st.sampled_from(["plain", "egress", "plain", "egress", "", "gpt-99", "../eval"]),
    name=st.builds("exp {}".format, _text),
    prompt=_text,
    params=st.one_of(_params_dict, _params_dict, _params_dict, _json),
    experiment_extra=_evil,
    shards=st.one_of(_valid_shards, _valid_shards, _valid_shards, st.integers(-2, 70), _evil_values),
    run_extra=_evil,
)
def test_no_api_payload_produces_container_options_outside_the_allowed_set(
    api_world: dict[str, Any],
    as_alice: APIClient,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    name: str,
    prompt: str,
    params: Any,
    experiment_extra: dict[str, Any],
    shards: Any,
    run_extra: dict[str, Any],
) -> None:
    body = {"name": name, "model": model, "dataset": api_world["dataset"], "prompt": prompt, "params": params}
    if set(experiment_extra) - set(body):
        r = as_alice.post("/api/v1/experiments/", {**body, **experiment_extra}, format="json")
        assert r.status_code == 400, r.content  # unknown fields are refused, never ignored
    r = as_alice.post("/api/v1/experiments/", body, format="json")
    if r.status_code != 201:
        event(f"experiment refused: {sorted(r.json())}")
        return
    start = {"experiment": r.json()["id"], "shards": shards}
    if set(run_extra) - set(start):
        r = as_alice.post("/api/v1/runs/", {**start, **run_extra}, format="json")
        assert r.status_code == 400, r.content
    r = as_alice.post("/api/v1/runs/", start, format="json")
    if r.status_code != 201:
        event("run refused")
        return
    event("reached the host worker's container options")
    run = Run.objects.select_related("experiment__model").get(pk=r.json()["id"])

    cspec = _worker_spec(run.spec, monkeypatch)
    opts = containers.container_options(cspec, run.experiment.model.digest)

    assert set(opts) <= ALLOWED_OPTIONS, set(opts) - ALLOWED_OPTIONS
    assert opts["image"] == run.experiment.model.digest
    assert opts["network_mode"] == ("host" if run.experiment.model.network else "none")
    assert opts["cap_drop"] == ["ALL"]
    assert "cap_add" not in opts
    assert not opts.get("privileged", False)
    assert opts["security_opt"] == ["no-new-privileges"]
    assert opts["read_only"] is True
    assert opts["user"] == "10001:10001"
    assert opts["memswap_limit"] == opts["mem_limit"]
    assert opts["pids_limit"] > 0
    assert opts["nano_cpus"] > 0
    assert opts["ipc_mode"] == "private"
    assert opts["device_requests"] is None
    assert "devices" not in opts
    assert set(opts["environment"]) == {"HOME", "PYTHONDONTWRITEBYTECODE"}
    assert set(opts["tmpfs"]) == {"/tmp"}
    assert {m["Target"]: m["ReadOnly"] for m in opts["mounts"]} == CONTRACT_MOUNTS
    assert len(opts["mounts"]) == len(CONTRACT_MOUNTS)
    for m in opts["mounts"]:
        src = Path(m["Source"])
        assert m["Type"] == "bind"
        assert src.is_relative_to(api_world["work"]) or src.is_relative_to(api_world["root"]), m
        assert "docker.sock" not in m["Source"]
    assert all(k.startswith("org.hyperbench.") for k in opts["labels"])
    assert opts["labels"][containers.MANAGED_LABEL] == "1"
    assert opts["labels"]["org.hyperbench.run"] == str(run.pk)


@docker_test
def test_the_probe_registered_as_a_model_finds_the_same_walls_through_a_run_from_the_api(
    platform: Stack,
    as_staff: APIClient,
    as_alice: APIClient,
    roots: dict[str, Path],
    images: dict[str, str],
) -> None:
    """The whole path a user takes (API -> run spec -> host worker -> container), not only the launcher:
    nothing between the API and the engine loosens the hardening."""
    ds = roots["datasets"] / "probe-run" / "1"
    load_script("make_sample_dataset").write_dataset(ds, 1, 3)
    register_model(as_staff, "probe", f"hyperbench/probe:{IMAGE_VERSION}", images["probe"])
    dataset = register_dataset(as_alice, ds)
    srv = _listener()
    try:
        params = {"tcp_port": srv.getsockname()[1], "public_addr": "1.1.1.1:53", "forks": 500}
        experiment = create_experiment(as_alice, "probe", dataset["id"], params)
        data = wait_for_run(as_alice, start_run(as_alice, experiment))
    finally:
        srv.close()

    assert data["state"] == "succeeded", data["error_reason"]
    line = stored_artifact(data["id"]).read_text().splitlines()[0]
    found = json.loads(json.loads(line)["prediction"])
    assert (found["uid"], found["euid"], found["cap_eff"], found["no_new_privs"]) == (10001, 10001, 0, 1)
    assert found["write_root"]["writable"] is False
    assert found["write_data"]["writable"] is False
    assert found["write_output"]["writable"] is True
    assert found["interfaces"] == ["lo"]
    assert found["tcp_loopback"]["connected"] is False
    assert found["tcp_public"]["connected"] is False
    assert found["fork"]["error"] == "EAGAIN"
    assert found["fork"]["forked"] < 500
    assert found["docker_socket"] == []
    assert found["devices"]
    assert set(found["devices"]) <= DEFAULT_DEVICES
    assert found["cgroup"]["swap_max"] == 0
    assert found["cgroup"]["memory_max"] > 0
    assert found["mounts"]["/"]["ro"] is True
