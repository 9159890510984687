"""The control worker's Celery app: Django settings, queue ``control`` only."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hyperbench_web.settings")

app = Celery("hyperbench_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["apps.runs", "apps.hosts"])
