"""A remote host joins over an untrusted network: Redis over TLS, an ACL user of its own.

A redis-server of the test's own listens on TLS only, with a CA and a server certificate made
here by ``openssl`` (tests/tls_pki.py), the default user off, and the two users of
docs/operations.md ("Joining a remote host"): the control side's and one host's, restricted to
what Celery's Redis transport needs. A real host worker process joins through it; the test,
acting as the control side, takes the worker's heartbeat off the ``hb.events`` list and gets its
reply to a remote-control broadcast, and Redis's ACL log shows that the host was never denied
anything. A worker with a CA that did not sign the broker's certificate, or without a password,
is refused at start with a message naming the setting to fix.

Fails (never skips) when redis-server or openssl is missing or does not start.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from kombu import Connection, Exchange, Queue
from tls_pki import make_pki

from hyperbench_web.devstack import REPO, VENV_BIN
from tests.conftest import free_port
from worker import brokertls, contract

HOST = "pod1"
HOST_PW = "host-pod1-test-pw"
CONTROL_PW = "control-test-pw"
ADMIN_PW = "admin-test-pw"

# kombu's priority sub-queues are <queue>\x06\x16<n>: this matches them, and not another
# queue whose name merely starts with this one's (host.pod1 vs host.pod10).
PRI = "[^-._a-zA-Z0-9]*"


def host_acl(host: str, password: str) -> str:
    """The Redis ACL rules of one host, as docs/operations.md gives them."""
    own = ["cpu", "gpu", f"host.{host}"]
    queues = " ".join(f"%RW~{q} %RW~{q}{PRI}" for q in own)
    bindings = " ".join(
        f"%RW~_kombu.binding.{x} %RW~_kombu.binding_permanent.{x}" for x in [*own, "celery.pidbox"]
    )
    return " ".join(
        [
            f"on >{password} resetkeys resetchannels -@all",
            "+ping +hello +auth +client|setname +multi +exec +discard +watch +unwatch +script|load",
            "+psubscribe +punsubscribe &/0.celery.pidbox",
            f"(+brpop +rpop +lpush +rpush +llen +exists +pexpire {queues})",
            f"(+llen +exists +del %RW~{host}@*.celery.pidbox %RW~{host}@*.celery.pidbox{PRI})",
            "(+smembers %R~_kombu.binding.*)",
            f"(+sadd +srem {bindings})",
            "(+lpush %W~control %W~hb.events %W~*.reply.celery.pidbox)",
            "(+zadd +zrem +zrange +zrangebyscore +zrevrangebyscore +hset +hget +hdel +watch"
            " %RW~unacked %RW~unacked_index)",
            "(+set +get +del +evalsha %RW~unacked_mutex)",
        ]
    )


def control_acl(password: str) -> str:
    return f"on >{password} ~* &* +@all -@dangerous"


@dataclass
class Broker:
    port: int
    dir: Path
    ca: Path
    other_ca: Path

    def url(self, user: str = f"hb-host-{HOST}", password: str = HOST_PW) -> str:
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"rediss://{auth}127.0.0.1:{self.port}/0"

    def ssl(self) -> dict[str, Any]:
        opts = brokertls.ssl_options(self.url(), ca_file=str(self.ca))
        assert opts is not None
        return opts

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.url("admin", ADMIN_PW), **self.ssl())


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed; run `make test` (scripts/bootstrap.sh installs it).")
    d = tmp_path_factory.mktemp("tlsbroker")
    pki = make_pki(d)
    (d / "users.acl").write_text(
        "user default off\n"
        f"user admin on >{ADMIN_PW} ~* &* +@all\n"
        f"user hb-control {control_acl(CONTROL_PW)}\n"
        f"user hb-host-{HOST} {host_acl(HOST, HOST_PW)}\n"
    )
    port = free_port()
    # fmt: off
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "optional",
         "--aclfile", str(d / "users.acl"), "--save", "", "--appendonly", "no", "--dir", str(d)],
        stdout=open(d / "redis.log", "wb"),  # noqa: SIM115 - handed to the child
        stderr=subprocess.STDOUT,
    )
    # fmt: on
    broker = Broker(port=port, dir=d, ca=pki.ca, other_ca=pki.other_ca)
    deadline = time.monotonic() + 10
    while True:
        try:
            if broker.admin().ping():
                break
        except redis.RedisError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (d / "redis.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"redis-server with TLS did not start on 127.0.0.1:{port} ({e}):\n{log}")
            time.sleep(0.1)
    yield broker
    proc.terminate()
    proc.wait(timeout=10)


def _host_env(tmp: Path, url: str, ca: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST_"))}
    for k in ("DATABASE_URL", "SECRET_KEY", "HYPERBENCH_BROKER_CERT_FILE", "HYPERBENCH_BROKER_KEY_FILE"):
        env.pop(k, None)
    env.update(
        CELERY_BROKER_URL=url,
        HYPERBENCH_HOSTNAME=HOST,
        HYPERBENCH_VAR_DIR=str(tmp / "var"),
        HYPERBENCH_HEARTBEAT_S="2",
        PYTHONUNBUFFERED="1",
    )
    env.pop("HYPERBENCH_BROKER_CA_FILE", None)
    if ca is not None:
        env["HYPERBENCH_BROKER_CA_FILE"] = str(ca)
    return env


def _start_host(tmp: Path, url: str, ca: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
    """A host worker as a remote host runs it (docs/operations.md): -Q cpu, no mingle/gossip/heartbeat."""
    log = tmp / f"host-{time.monotonic_ns()}.log"
    # fmt: off
    proc = subprocess.Popen(
        [str(VENV_BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "cpu", "-n", f"{HOST}@%h",
         "--concurrency", "1", "--loglevel", "INFO",
         "--without-mingle", "--without-gossip", "--without-heartbeat"],
        cwd=REPO, env=_host_env(tmp, url, ca), stdout=open(log, "wb"),  # noqa: SIM115
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    # fmt: on
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)


def _refused(tmp: Path, url: str, ca: Path | None) -> str:
    """Start a host worker that must refuse to start; return its log."""
    proc, log = _start_host(tmp, url, ca)
    try:
        rc = proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        _stop(proc)
        pytest.fail(f"the worker did not refuse to start:\n{log.read_text(errors='replace')[-3000:]}")
    text = log.read_text(errors="replace")
    assert rc != 0, text
    assert "refusing to start" in text, text
    assert "Traceback" not in text, text
    return text


def test_a_remote_host_joins_over_tls_with_its_own_acl_user(tls_broker: Broker, tmp_path: Path) -> None:
    control_url = tls_broker.url("hb-control", CONTROL_PW)
    ssl_opts = tls_broker.ssl()
    admin = tls_broker.admin()
    admin.execute_command("ACL", "LOG", "RESET")
    control_q = Queue(
        contract.Queue.CONTROL, Exchange(contract.Queue.CONTROL), routing_key=contract.Queue.CONTROL
    )
    with Connection(control_url, ssl=ssl_opts) as conn:
        control_q(conn.default_channel).declare()  # the control side declares its queue
    proc, log = _start_host(tmp_path, tls_broker.url(), tls_broker.ca)
    try:
        # The host's first heartbeat, taken off `hb.events` as the control worker's drain would.
        beat: dict[str, Any] = {}
        with Connection(control_url, ssl=ssl_opts) as conn:
            channel = conn.default_channel
            deadline = time.monotonic() + 45
            while not beat:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no heartbeat from the host:\n{log.read_text(errors='replace')[-3000:]}")
                raw = channel.client.rpop(contract.EVENTS_QUEUE)
                if raw is None:
                    time.sleep(0.5)
                    continue
                items = channel.Message(json.loads(raw), channel=channel).decode()
                beat = next((i["heartbeat"] for i in items if "heartbeat" in i), {})
        assert beat["host"] == HOST
        assert beat["queue"] == contract.host_queue(HOST)

        # A cancel's remote-control broadcast reaches the host and its reply comes back.
        control = Celery("test-control", broker=control_url)
        control.conf.broker_use_ssl = ssl_opts
        replies: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20
        while not replies and time.monotonic() < deadline:
            replies = control.control.broadcast(
                contract.CONTROL_STOP_RUN, arguments={"run_id": 424242}, reply=True, timeout=3
            )
        assert replies, log.read_text(errors="replace")[-3000:]
        (node, answer), *_ = replies[0].items()
        assert node.startswith(f"{HOST}@")
        assert answer == {"ok": f"stopping run 424242 on {HOST}"}
        control.close()
        text = log.read_text(errors="replace")
        assert "NoPermissionError" not in text, text
        assert "NOPERM" not in text, text
    finally:
        _stop(proc)
    # Redis denied the host nothing, from start to shutdown.
    denied = [e for e in admin.acl_log() if e.get("username") == f"hb-host-{HOST}"]
    assert denied == [], denied

    # ... and it can do nothing beyond that.
    host = redis.Redis.from_url(tls_broker.url(), **ssl_opts)
    for cmd in (
        ("RPOP", "control"),  # take the control side's events or other hosts' heartbeats
        ("LPUSH", "host.pod10", "x"),  # another host's queue
        ("BRPOP", "host.pod2", "1"),
        ("DEL", "cpu"),  # wipe the shared queue
        ("PUBLISH", "/0.celery.pidbox", "x"),  # broadcast remote-control commands to every worker
        ("KEYS", "*"),
        ("HGETALL", "hyperbench.control.unacked"),
        ("CONFIG", "GET", "requirepass"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            host.execute_command(*cmd)
    host.close()
    # (and the ACL log does record this user's denials: the empty log above means something)
    assert any(e.get("username") == f"hb-host-{HOST}" for e in admin.acl_log())


def test_a_host_with_the_wrong_ca_is_refused_naming_the_setting(tls_broker: Broker, tmp_path: Path) -> None:
    text = _refused(tmp_path, tls_broker.url(), tls_broker.other_ca)
    assert "HYPERBENCH_BROKER_CA_FILE" in text
    assert "does not verify" in text


def test_a_host_without_a_ca_or_a_password_is_refused(tls_broker: Broker, tmp_path: Path) -> None:
    text = _refused(tmp_path, tls_broker.url(), None)
    assert "HYPERBENCH_BROKER_CA_FILE is not set" in text
    text = _refused(tmp_path, tls_broker.url(password=""), tls_broker.ca)
    assert "has no password" in text
    assert "CELERY_BROKER_URL" in text
    assert HOST_PW not in text


def test_a_host_with_a_wrong_password_is_refused_by_the_broker(tls_broker: Broker, tmp_path: Path) -> None:
    text = _refused(tmp_path, tls_broker.url(password="not-the-password"), tls_broker.ca)
    assert "refused this host's user or password" in text
    assert "CELERY_BROKER_URL" in text
    assert "not-the-password" not in text


def test_ssl_options_never_turn_verification_off(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not checked here")
    opts = brokertls.ssl_options("rediss://u:p@h:6380/0", ca_file=str(ca))
    assert opts is not None
    assert opts["ssl_cert_reqs"] == __import__("ssl").CERT_REQUIRED
    assert opts["ssl_check_hostname"] is True
    assert opts["ssl_ca_certs"] == str(ca.resolve())
    assert "ssl_ca_certs" not in (brokertls.ssl_options("rediss://u:p@h/0", ca_file="system") or {})
    assert brokertls.ssl_options("redis://127.0.0.1:6379/0") is None
    bad = [
        ("rediss://u:p@h/0?ssl_cert_reqs=none", {"ca_file": str(ca)}, "ssl_cert_reqs"),
        ("redis://h/0", {"ca_file": str(ca)}, "clear text"),
        ("rediss://u:p@h/0", {"ca_file": str(tmp_path / "missing.pem")}, "HYPERBENCH_BROKER_CA_FILE"),
        ("rediss://u:p@h/0", {"ca_file": str(ca), "cert_file": str(ca)}, "HYPERBENCH_BROKER_KEY_FILE"),
    ]
    for url, kw, needle in bad:
        with pytest.raises(brokertls.BrokerConfigError, match=needle):
            brokertls.ssl_options(url, **kw)
    assert brokertls.redact("rediss://u:secret@h:1/0") == "rediss://u:***@h:1/0"
