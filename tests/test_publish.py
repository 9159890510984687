"""Publishing through the host's spool: an unreachable store is waited out, never loses the output."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from worker.config import load
from worker.errors import HostError
from worker.publish import publish


class FlakyStore:
    """Fails ``down`` times with a transient error (S3 away), then stores the file."""

    def __init__(self, down: int, *, permanent: bool = False) -> None:
        self.down, self.permanent, self.tries = down, permanent, 0
        self.stored: dict[str, bytes] = {}

    def put_file(self, local: Path, uri: str) -> str:
        self.tries += 1
        if self.tries <= self.down:
            raise HostError("S3 answered 503 SlowDown", permanent=self.permanent)
        self.stored[uri] = local.read_bytes()
        return uri


def _cfg(tmp_path: Path, window_s: int) -> Any:
    return dataclasses.replace(
        load(), work_dir=tmp_path / "work", upload_window_s=window_s, hostname="gpu-07"
    )


def test_a_store_that_comes_back_within_the_window_gets_the_output(tmp_path: Path) -> None:
    local = tmp_path / "predictions.jsonl"
    local.write_text('{"id": "a"}\n')
    store = FlakyStore(down=4)
    slept: list[float] = []
    alive: list[str] = []

    uri = publish(
        store,
        local,
        "s3://b/runs/1/p.jsonl",
        _cfg(tmp_path, 600),
        run_id=1,
        key="p.jsonl",
        alive=alive.append,
        sleep=slept.append,
    )

    assert uri == "s3://b/runs/1/p.jsonl"
    assert store.stored[uri] == b'{"id": "a"}\n'
    assert store.tries == 5, "capped exponential backoff"
    assert slept == [2.0, 4.0, 8.0, 16.0], "capped exponential backoff"
    assert not list((tmp_path / "work" / "spool").rglob("*.jsonl")), "the spooled copy goes once stored"


def test_a_spent_window_fails_naming_the_spooled_output_which_stays(tmp_path: Path) -> None:
    local = tmp_path / "predictions.jsonl"
    local.write_text('{"id": "a"}\n')

    with pytest.raises(HostError) as err:
        publish(
            FlakyStore(down=10**6),
            local,
            "s3://b/k",
            _cfg(tmp_path, 0),
            run_id=3,
            key="shards/0/p.jsonl",
            sleep=lambda s: None,
        )

    spooled = tmp_path / "work" / "spool" / "run-3" / "shards" / "0" / "p.jsonl"
    assert str(spooled) in str(err.value)
    assert "gpu-07" in str(err.value)
    assert spooled.read_text() == '{"id": "a"}\n'


def test_a_permanent_store_error_fails_at_once(tmp_path: Path) -> None:
    local = tmp_path / "x"
    local.write_text("x")
    store = FlakyStore(down=1, permanent=True)

    with pytest.raises(HostError, match="SlowDown"):
        publish(store, local, "s3://b/k", _cfg(tmp_path, 600), run_id=1, key="x", sleep=lambda s: None)
    assert store.tries == 1


def test_a_key_cannot_spool_outside_the_spool(tmp_path: Path) -> None:
    local = tmp_path / "x"
    local.write_text("x")
    with pytest.raises(HostError, match="outside the spool"):
        publish(FlakyStore(0), local, "s3://b/k", _cfg(tmp_path, 1), run_id=1, key="../../../etc/x")
