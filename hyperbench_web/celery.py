"""The control worker's Celery app: Django settings, queue ``control`` only."""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from celery.signals import celeryd_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hyperbench_web.settings")

app = Celery("hyperbench_web")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["apps.runs", "apps.hosts"])


@celeryd_init.connect
def _check_broker(**_: Any) -> None:
    """Refuse to start on broker settings that cannot work (worker/brokertls.py), with one line
    naming the setting to fix; an unreachable broker is left to Celery's retries."""
    from django.conf import settings

    from worker import brokertls

    try:
        brokertls.check(settings.CELERY_BROKER_URL, settings.CELERY_BROKER_USE_SSL)
    except brokertls.BrokerConfigError as e:
        print(f"hyperbench control worker: refusing to start: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from e
