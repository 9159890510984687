from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from apps.catalog.models import MODEL_IMAGE_FIELDS, Dataset, ModelImage
from apps.catalog.services import RegistrationError, dataset_register
from apps.catalog.validators import model_problems
from worker.contract import is_image_id


class DatasetRegisterForm(forms.Form):
    uri = forms.CharField(
        label="URI",
        max_length=1000,
        widget=forms.TextInput(attrs={"size": 80, "placeholder": "s3://bucket/prefix/ or file:///dir/"}),
        help_text="file:///dir/ under a configured dataset root, or s3://bucket/prefix/ in an "
        "allow-listed bucket. The manifest is validated before anything is recorded.",
    )


@admin.register(Dataset)
class DatasetAdmin(admin.ModelAdmin):
    list_display = ("name", "version", "task", "sample_count", "total_bytes", "short_hash", "created_at")
    list_filter = ("task",)
    search_fields = ("name", "version", "manifest_sha256")

    def get_readonly_fields(self, request: HttpRequest, obj: Dataset | None = None) -> list[str]:
        # A version is immutable once registered: everything it records came from its manifest.
        return [f.name for f in Dataset._meta.fields if f.name != "id"]

    @admin.display(description="manifest")
    def short_hash(self, obj: Dataset) -> str:
        return obj.manifest_sha256[:12]

    def add_view(
        self, request: HttpRequest, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """Register a version from its URI through ``dataset_register``.

        Not the stock add view: that one wraps the request in a transaction, and
        registration streams the manifest (and lists the S3 prefix) first.
        """
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = DatasetRegisterForm(request.POST if request.method == "POST" else None)
        problems: list[str] = []
        if request.method == "POST" and form.is_valid():
            try:
                done = dataset_register(uri=form.cleaned_data["uri"], created_by=request.user)
            except RegistrationError as e:
                form.add_error("uri", str(e))
                problems = e.problems
            else:
                dataset = done.dataset
                if done.outcome == "created":
                    self.log_addition(request, dataset, [{"added": {}}])
                    sizes = f"{dataset.sample_count} samples, {dataset.total_bytes} bytes"
                    self.message_user(request, f"Registered {dataset}: {sizes}.", messages.SUCCESS)
                elif done.outcome == "added_source":
                    self.log_change(request, dataset, [{"changed": {"fields": ["source_uri", "s3_uri"]}}])
                    self.message_user(request, done.message, messages.SUCCESS)
                else:
                    self.message_user(request, done.message, messages.INFO)
                return HttpResponseRedirect(reverse("admin:catalog_dataset_change", args=[dataset.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Register a dataset version",
            "opts": self.model._meta,
            "form": form,
            "problems": problems,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/catalog/dataset/register.html", context)


class ModelImageAdminForm(forms.ModelForm):
    """The admin's way in: the same pin rule as model_image_register (the column itself may be blank)."""

    endpoint_base_url = forms.URLField(
        required=False, assume_scheme="https", help_text="OpenAI-compatible base URL (ends in /v1)"
    )

    class Meta:
        model = ModelImage
        # Every editable field: with ["digest"] alone, the admin's add and change pages showed only
        # the digest (get_fields reads this form's fields) and saved models without a name or image.
        # Listed by name (apps.catalog.models.MODEL_IMAGE_FIELDS), so that a new column is shown
        # only once added there.
        fields = MODEL_IMAGE_FIELDS

    def clean(self) -> dict[str, Any]:
        # The registration service's checks (endpoint URL, API-key variable, bounds, default_params).
        cleaned = super().clean() or {}
        for field, why in model_problems(dict(cleaned)).items():
            self.add_error(field if field in self.fields else None, why)
        return cleaned

    def clean_digest(self) -> str:
        digest = str(self.cleaned_data.get("digest") or "").strip()
        if not is_image_id(digest):
            raise forms.ValidationError(
                "Give the image id the hosts must find: sha256: and 64 hex digits "
                "(docker image inspect --format '{{.Id}}' IMAGE)."
            )
        return digest


@admin.register(ModelImage)
class ModelImageAdmin(admin.ModelAdmin):
    form = ModelImageAdminForm
    list_display = ("name", "image", "digest", "requires_gpu", "gpus", "network", "cacheable")
    list_filter = ("requires_gpu", "network")
    search_fields = ("name", "image")
