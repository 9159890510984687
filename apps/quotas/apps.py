from __future__ import annotations

from django.apps import AppConfig


class QuotasConfig(AppConfig):
    name = "apps.quotas"
    verbose_name = "Quotas"
