from __future__ import annotations

from django.contrib import admin

from apps.quotas import admin_upload
from apps.quotas.models import UserQuota


@admin.register(UserQuota)
class UserQuotaAdmin(admin.ModelAdmin):
    list_display = ("user", "concurrent_runs", "shards_per_run", "runs_per_day", "note", "updated_at")
    search_fields = ("user__username", "note")
    autocomplete_fields = ("user",)


# Datasets > "Upload a dataset": the catalog's dataset admin with the upload page, which needs the
# per-user storage quota of this app (apps/quotas/admin_upload.py says why it lives here).
admin_upload.install(admin.site)
