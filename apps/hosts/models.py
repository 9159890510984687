"""Host workers as they last reported themselves (GPUs, cache, running containers)."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class Host(models.Model):
    name = models.CharField(max_length=200, unique=True)
    worker = models.CharField(max_length=200, blank=True)
    last_seen = models.DateTimeField()
    nvml = models.BooleanField(default=False, help_text="NVML answered on this host")
    gpus = models.JSONField(default=list, blank=True)
    cache = models.JSONField(default=list, blank=True)
    cache_bytes = models.PositiveBigIntegerField(default=0)
    cache_budget_bytes = models.PositiveBigIntegerField(default=0)
    running = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def silent(self) -> bool:
        """No heartbeat for three periods: the worker is gone, stuck or cut off."""
        return timezone.now() - self.last_seen > timedelta(seconds=settings.HYPERBENCH_HOST_SILENT_S)
