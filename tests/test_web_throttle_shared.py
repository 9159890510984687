"""The one-machine stack's web app (gunicorn, two worker processes) keeps its throttle counters in
one cache, the broker's Redis (hyperbench_web/devstack.py: shared_cache_url): the 11th wrong
password within a minute is a 429 whichever process answers it. With Django's per-process default
cache, each process would allow its own ten."""

from __future__ import annotations

import time

import pytest
import redis
import requests

from hyperbench_web.devstack import Stack, shared_cache_url
from tests.conftest import free_port

pytestmark = pytest.mark.timeout(180)


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            assert time.monotonic() < deadline, f"the web app did not answer at {url}"
            time.sleep(0.3)


def test_the_stacks_web_processes_count_failed_logins_together(
    db: None, workers: Stack, redis_url: str
) -> None:
    """(``db``: the suite's test database is made only for a session with a test that asks for it.)"""
    port, before = free_port(), workers.web_port
    workers.web_port = port
    workers.start(("web",))
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/api/v1/")
        guesses = [{"username": "nobody", "password": f"guess-{i}"} for i in range(12)]
        codes = [requests.post(base + "/api/v1/auth/token/", json=g, timeout=30).status_code for g in guesses]
        assert codes == [400] * 10 + [429, 429], codes
        cache = redis.Redis.from_url(shared_cache_url(redis_url))
        assert cache.keys("*throttle_token*"), "the counter is not in the shared Redis cache"
    finally:
        workers.stop(("web",))
        workers.web_port = before
