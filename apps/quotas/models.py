"""Per-user quotas on runs and uploaded datasets; blank means the site default (``HYPERBENCH_QUOTA_*``)."""

from __future__ import annotations

from typing import ClassVar

from django.conf import settings
from django.db import models

_HELP = "Blank: the site default ({setting}; staff: no limit). 0: no limit."


class UserQuota(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="quota")
    concurrent_runs = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Runs queued, running, evaluating or reporting at once. "
        + _HELP.format(setting="HYPERBENCH_QUOTA_CONCURRENT_RUNS"),
    )
    shards_per_run = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Shards one run may have. " + _HELP.format(setting="HYPERBENCH_QUOTA_SHARDS_PER_RUN"),
    )
    runs_per_day = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Runs started in any 24 hours. " + _HELP.format(setting="HYPERBENCH_QUOTA_RUNS_PER_DAY"),
    )
    upload_bytes = models.PositiveBigIntegerField(
        null=True,
        blank=True,
        help_text="Bytes of uploaded dataset versions, in all. "
        + _HELP.format(setting="HYPERBENCH_QUOTA_UPLOAD_BYTES"),
    )
    note = models.CharField(max_length=300, blank=True, help_text="Why this user has these quotas")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "user quota"
        ordering: ClassVar[list[str]] = ["user__username"]

    def __str__(self) -> str:
        return f"quotas of {self.user}"
