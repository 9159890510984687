"""Quotas per user: concurrent runs, shards per run, runs per day, bytes of uploaded datasets.

Each quota is the user's own (``UserQuota``, set by staff in the admin) or else the site default
(``HYPERBENCH_QUOTA_CONCURRENT_RUNS``, ``_SHARDS_PER_RUN``, ``_RUNS_PER_DAY``); staff have no
limit unless a ``UserQuota`` row sets one. 0 means no limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from apps.catalog.services import Registration
from apps.catalog.uploads import UploadOverQuota, UploadRequest, dataset_upload, uploaded_bytes
from apps.quotas.models import UserQuota
from apps.runs.models import Evaluation, Run

DAY = timedelta(days=1)

#: quota name -> (UserQuota field, default setting)
QUOTAS = {
    "concurrent_runs": "HYPERBENCH_QUOTA_CONCURRENT_RUNS",
    "shards_per_run": "HYPERBENCH_QUOTA_SHARDS_PER_RUN",
    "runs_per_day": "HYPERBENCH_QUOTA_RUNS_PER_DAY",
    "upload_bytes": "HYPERBENCH_QUOTA_UPLOAD_BYTES",
}

HOW_TO_GET_MORE = "Ask staff to raise it (admin: Quotas > User quotas)."


class QuotaExceeded(Exception):
    """A run would go over one of the user's quotas. ``status``: 403 for a request that can never
    pass as it is (too many shards), 429 for one that can later (``retry_after`` seconds, or None)."""

    def __init__(
        self, message: str, *, quota: str, limit: int, status: int, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.quota = quota
        self.limit = limit
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Quotas:
    concurrent_runs: int | None  # None: no limit
    shards_per_run: int | None
    runs_per_day: int | None
    upload_bytes: int | None


def quotas_for(user: Any) -> Quotas:
    row = UserQuota.objects.filter(user_id=user.pk).first() if user.pk is not None else None
    values: dict[str, int | None] = {}
    for name, setting in QUOTAS.items():
        own = getattr(row, name) if row is not None else None
        if own is None:
            own = None if user.is_staff else int(getattr(settings, setting))
        values[name] = own or None  # 0: no limit
    return Quotas(**values)


@contextmanager
def run_admission(user: Any, shards: int) -> Iterator[None]:
    """Check the run quotas and keep them true until the caller's run exists.

    Start the run inside the block: the starter's user row stays locked to the end of the
    transaction (PostgreSQL; SQLite's IMMEDIATE transactions serialise writers anyway), so two
    starts of one user at the same instant cannot both pass the concurrent-runs or runs-per-day
    check. Raises :class:`QuotaExceeded` like :func:`check_run_quota`.
    """
    with transaction.atomic():
        if user.pk is not None:
            list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        check_run_quota(user, shards)
        yield


def check_run_quota(user: Any, shards: int) -> None:
    """Raise :class:`QuotaExceeded` if ``user`` starting a run of ``shards`` shards would exceed a
    quota; ``shards=0``: a rescore, held to ``concurrent_runs`` only."""
    q = quotas_for(user)
    if q.shards_per_run is not None and shards > q.shards_per_run:
        raise QuotaExceeded(
            f"Quota shards_per_run: your runs may have at most {q.shards_per_run} shards "
            f"(you asked for {shards}). Start it with fewer shards, or {HOW_TO_GET_MORE}",
            quota="shards_per_run",
            limit=q.shards_per_run,
            status=403,
        )
    mine = Run.objects.filter(created_by_id=user.pk)
    if q.concurrent_runs is not None:
        # A rescore runs the eval and report containers like a run's end: it counts as one.
        rescores = Evaluation.objects.filter(created_by_id=user.pk, state__in=Evaluation.ACTIVE).count()
        active = mine.filter(state__in=Run.ACTIVE).count() + rescores
        if active >= q.concurrent_runs:
            raise QuotaExceeded(
                f"Quota concurrent_runs: you have {active} unfinished runs and re-scores and may have "
                f"at most {q.concurrent_runs}. Wait for one to finish or cancel a run, or {HOW_TO_GET_MORE}",
                quota="concurrent_runs",
                limit=q.concurrent_runs,
                status=429,
            )
    if q.runs_per_day is not None and shards > 0:
        since = timezone.now() - DAY
        recent = mine.filter(created_at__gte=since)
        count = recent.count()
        if count >= q.runs_per_day:
            # The window frees a slot when the oldest run in it turns 24 hours old.
            oldest = recent.order_by("created_at").values_list("created_at", flat=True)[
                count - q.runs_per_day
            ]
            wait = max(1, int((oldest + DAY - timezone.now()).total_seconds()) + 1)
            raise QuotaExceeded(
                f"Quota runs_per_day: you started {count} runs in the last 24 hours and may start "
                f"at most {q.runs_per_day}. Try again in {wait} s, or {HOW_TO_GET_MORE}",
                quota="runs_per_day",
                limit=q.runs_per_day,
                status=429,
                retry_after=wait,
            )


def upload_bytes_left(user: Any) -> int | None:
    """Bytes ``user`` may still store in uploaded datasets (None: no limit).

    Raises:
        QuotaExceeded: (403) nothing is left: the quota is used up.
    """
    limit = quotas_for(user).upload_bytes
    if limit is None:
        return None
    used = uploaded_bytes(user)
    if used >= limit:
        raise QuotaExceeded(
            f"Quota upload_bytes: your uploaded datasets hold {used} bytes and you may store at most "
            f"{limit}. {HOW_TO_GET_MORE}",
            quota="upload_bytes",
            limit=limit,
            status=403,
        )
    return limit - used


def upload_over_quota(user: Any, message: str) -> QuotaExceeded:
    """The 403 of an upload that would go over the user's storage quota."""
    limit = quotas_for(user).upload_bytes or 0
    return QuotaExceeded(
        f"Quota upload_bytes: {message} {HOW_TO_GET_MORE}", quota="upload_bytes", limit=limit, status=403
    )


def upload_within_quota(upload: Any, request: UploadRequest, user: Any, left: int | None) -> Registration:
    """``dataset_upload`` of Django's staged ``upload`` (closed after) within the ``left`` bytes of
    ``user``'s storage quota (``upload_bytes_left``): the API's and the admin's upload, written once.

    Raises:
        QuotaExceeded: (403) the converted dataset would go over the quota.
        RegistrationError: as ``dataset_upload``.
    """
    try:
        return dataset_upload(upload=Path(upload.file.name), request=request, user=user, quota_left=left)
    except UploadOverQuota as e:
        raise upload_over_quota(user, str(e)) from e
    finally:
        upload.close()
