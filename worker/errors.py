"""The host worker's exception base (one per layer, docker-py style)."""

from __future__ import annotations


class HostError(Exception):
    """A stage cannot complete. ``str(e)`` is the reason shown to the user.

    ``permanent`` errors fail the run at once (a missing image, a bad dataset);
    transient ones (the Docker engine restarting, a storage hiccup) are retried
    with backoff a bounded number of times first.
    """

    def __init__(self, reason: str, *, permanent: bool = True) -> None:
        super().__init__(reason)
        self.permanent = permanent
