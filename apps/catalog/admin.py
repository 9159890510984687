from __future__ import annotations

from django.contrib import admin

from apps.catalog.models import Dataset, ModelImage


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ["name", "version", "task", "sample_count", "total_bytes", "short_hash", "created_at"]
    list_filter = ["task"]
    search_fields = ["name", "version", "manifest_sha256"]
    readonly_fields = ["manifest_sha256", "sample_count", "total_bytes", "created_by", "created_at"]

    @admin.display(description="manifest")
    def short_hash(self, obj: Dataset) -> str:
        return obj.manifest_sha256[:12]


@admin.register(ModelImage)
class ModelImageAdmin(admin.ModelAdmin):
    list_display = ["name", "image", "digest", "requires_gpu", "gpus", "network"]
    list_filter = ["requires_gpu", "network"]
    search_fields = ["name", "image"]
