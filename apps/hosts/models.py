"""Host workers as they last reported themselves (GPUs, cache, running containers)."""

from __future__ import annotations

from datetime import timedelta
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone


class Host(models.Model):
    name = models.CharField(max_length=200, unique=True)
    worker = models.CharField(max_length=200, blank=True)
    instance = models.CharField(max_length=64, blank=True, help_text="New at every start of the host worker")
    queue = models.CharField(max_length=210, blank=True, help_text="The host's own queue")
    dataset_roots = models.JSONField(default=list, blank=True, help_text="file:// roots this host mounts")
    slots = models.PositiveIntegerField(default=1, help_text="Tasks the worker runs at once")
    active = models.PositiveIntegerField(default=0, help_text="Tasks it ran at its last heartbeat")
    tasks = models.JSONField(
        default=list, blank=True, help_text="Ids of the tasks it held (running or reserved)"
    )
    last_seen = models.DateTimeField()
    reported_at = models.DateTimeField(
        default=timezone.now,
        help_text="When the control plane stored the last report (its own clock; last_seen is the host's)",
    )
    nvml = models.BooleanField(default=False, help_text="NVML answered on this host")
    gpus = models.JSONField(default=list, blank=True)
    cache = models.JSONField(default=list, blank=True)
    cache_bytes = models.PositiveBigIntegerField(default=0)
    cache_budget_bytes = models.PositiveBigIntegerField(default=0)
    running = models.JSONField(default=list, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def idle(self) -> bool:
        """Live, and a pool slot was free at its last heartbeat."""
        return not self.silent and self.active < max(self.slots, 1)

    def holds(self, task_id: str) -> bool:
        """Live, and holding this task (running it, or reserved for it) at its last heartbeat."""
        return not self.silent and task_id in (self.tasks or [])

    @property
    def silent(self) -> bool:
        """No heartbeat stored for three periods: the worker is gone, stuck or cut off. Counted on
        the control plane's clock (``reported_at``), so a host whose clock runs behind is not
        taken for silent and its shards are not moved away."""
        return timezone.now() - self.reported_at > timedelta(seconds=settings.HYPERBENCH_HOST_SILENT_S)
