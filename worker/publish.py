"""Publishing a stage's outputs: spooled on the host until the artifact store has them.

A shard's validated predictions and its container log are copied into the
host's spool (``<work>/spool/run-<id>/<key>``) first, then uploaded. A
transient store error (S3 down, 5xx, resets) is retried with capped
exponential backoff for ``HYPERBENCH_UPLOAD_WINDOW_S`` (default 15 min), the
task telling the control side it is alive meanwhile, so an S3 outage of
minutes costs the run minutes, not its finished work. Only when the window is
spent does the stage fail, and its reason names the spooled files, which stay
on the host. A permanent error (bad keys, a URI outside the allow-list) fails
at once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from worker.config import HostConfig
from worker.errors import HostError

logger = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


class Store(Protocol):
    """What publishing needs of an artifact store (``worker.storage.Artifacts`` has it)."""

    def put_file(self, local: Path, uri: str) -> str: ...


def spool_path(cfg: HostConfig, run_id: int, key: str) -> Path:
    path = (cfg.work_dir / "spool" / f"run-{int(run_id)}" / key).resolve()
    if not path.is_relative_to((cfg.work_dir / "spool").resolve()):
        raise HostError(f"Refusing to spool {key!r} outside the spool directory.")
    return path


def publish(
    store: Store,
    local: Path,
    uri: str,
    cfg: HostConfig,
    *,
    run_id: int,
    key: str,
    alive: Callable[[str], None] | None = None,
    stop: Callable[[], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Put ``local`` at ``uri`` through the spool; return ``uri``.

    Args:
        key: the artifact's key under the run (names the spooled copy).
        alive: called about every 30 s while the store is unreachable, with the
            last error (the task sends a sign of life, so the reconciler waits).
        stop: asked between tries; True gives up at once (the run was cancelled).

    Raises:
        HostError: a permanent store error, or the upload window was spent (the
            reason names the spooled file, which is kept).
    """
    spooled = spool_path(cfg, run_id, key)
    spooled.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(local, spooled)
    deadline = time.monotonic() + cfg.upload_window_s
    tries = 0
    last_alive = time.monotonic()
    while True:
        try:
            store.put_file(spooled, uri)
        except HostError as e:
            if e.permanent:
                spooled.unlink(missing_ok=True)
                raise
            tries += 1
            if time.monotonic() >= deadline or (stop is not None and stop()):
                raise HostError(
                    f"The artifact store did not take {key} for {cfg.upload_window_s}s ({e}); the output is "
                    f"kept on host {cfg.hostname} at {spooled}. Fix the store, then retry the run.",
                ) from e
            wait = min(MAX_BACKOFF_S, 2.0 ** min(tries, 5), max(0.0, deadline - time.monotonic()))
            logger.warning(
                "artifact store unreachable for %s (try %d), again in %.0fs: %s", key, tries, wait, e
            )
            if alive is not None and time.monotonic() - last_alive >= MAX_BACKOFF_S:
                alive(str(e))
                last_alive = time.monotonic()
            sleep(wait)
            continue
        spooled.unlink(missing_ok=True)
        return uri
