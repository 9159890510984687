"""The admin's dataset upload: Datasets > "Upload a dataset" (staff only).

The same service as ``POST /api/v1/datasets/upload/`` (:func:`apps.catalog.uploads.dataset_upload`)
behind the same upload handler (the file streams to disk in the uploads root's staging folder,
never whole in memory, refused past ``HYPERBENCH_UPLOAD_MAX_BYTES``) and the same per-user
storage quota (``upload_bytes``). It lives here, not in apps/catalog/admin.py, because the quota
is a layer above the catalog (pyproject's import-linter layers): :class:`DatasetUploadAdmin`
is the catalog's ``DatasetAdmin`` with this page added, registered for ``Dataset`` in its place.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.http.multipartparser import MultiPartParserError
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect

from apps.catalog.admin import DatasetAdmin
from apps.catalog.importers import FORMATS, LAYOUT
from apps.catalog.models import Dataset
from apps.catalog.services import RegistrationError
from apps.catalog.uploadhandler import StagedUploadHandler
from apps.catalog.uploads import (
    STAGING,
    UploadRequest,
    UploadsUnavailable,
    parse_columns,
    uploads_root,
)
from apps.quotas.services import QuotaExceeded, upload_bytes_left, upload_within_quota


class DatasetUploadForm(forms.Form):
    file = forms.FileField(
        help_text="An archive (.zip, .tar, .tar.gz, .tgz) in the dataset layout, or one file of an "
        "import format (.tsv, .parquet, .json, .jsonl, .pdf, or an archive of them)."
    )
    format = forms.ChoiceField(choices=[(f, f) for f in FORMATS], initial=LAYOUT)
    name = forms.CharField(max_length=100, required=False, help_text="Required unless format is layout.")
    version = forms.CharField(max_length=100, required=False, help_text="Required unless format is layout.")
    task = forms.ChoiceField(
        choices=[("", "---------"), *Dataset.Task.choices],
        required=False,
        help_text="Required unless format is layout.",
    )
    columns = forms.CharField(
        max_length=4000,
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='A JSON object mapping the format\'s names to the file\'s, e.g. {"answer": "gt"}.',
    )


class DatasetUploadAdmin(DatasetAdmin):
    """The catalog's dataset admin, with "Upload a dataset" (``admin:catalog_dataset_upload``)."""

    change_list_template = "admin/catalog/dataset/change_list_upload.html"

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view(self.upload_view)
        own = [path("upload/", view, name="catalog_dataset_upload")]
        return [*own, *super().get_urls()]

    @csrf_exempt  # checked below, once the upload handler is in place (Django's own pattern)
    def upload_view(self, request: HttpRequest) -> HttpResponse:
        """Stream the file to the staging folder, then the form (CSRF checked), then the service."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        try:
            root = uploads_root()
        except UploadsUnavailable as e:
            return self._page(request, DatasetUploadForm(), [str(e)])
        handler = StagedUploadHandler(request, root / STAGING, int(settings.HYPERBENCH_UPLOAD_MAX_BYTES))
        request.upload_handlers = [handler]
        try:
            if request.method == "POST":
                try:
                    request.POST  # noqa: B018 - the body streams through the handler now, before the CSRF check
                except MultiPartParserError as e:  # over HYPERBENCH_UPLOAD_MAX_BYTES, a second file
                    # Nothing was stored or changed; the form's token went with the refused body.
                    return self._page(request, DatasetUploadForm(), [f"The upload is refused: {e}"])
            return csrf_protect(self._upload)(request)
        finally:
            handler.discard()

    def _upload(self, request: HttpRequest) -> HttpResponse:
        if request.method != "POST":
            return self._page(request, DatasetUploadForm(), [])
        form = DatasetUploadForm(request.POST, request.FILES)
        problems: list[str] = []
        if form.is_valid():
            try:
                dataset = self._register(request, form)
            except (RegistrationError, QuotaExceeded) as e:
                form.add_error(None, str(e))
                problems = getattr(e, "problems", [])
            else:
                return HttpResponseRedirect(reverse("admin:catalog_dataset_change", args=[dataset.pk]))
        return self._page(request, form, [], problems)

    def _page(
        self,
        request: HttpRequest,
        form: DatasetUploadForm,
        refusals: list[str],
        problems: list[str] | None = None,
    ) -> HttpResponse:
        context = {
            **self.admin_site.each_context(request),
            "title": "Upload a dataset",
            "opts": self.model._meta,
            "form": form,
            "refusals": refusals,
            "problems": problems or [],
        }
        return TemplateResponse(request, "admin/catalog/dataset/upload.html", context)

    def _register(self, request: HttpRequest, form: DatasetUploadForm) -> Dataset:
        """The service's call, as the API makes it; QuotaExceeded and RegistrationError pass through."""
        left = upload_bytes_left(request.user)
        v = form.cleaned_data
        upload = v["file"]
        req = UploadRequest(
            fmt=v["format"],
            filename=str(upload.name or ""),
            name=v["name"],
            version=v["version"],
            task=v["task"],
            columns=parse_columns(v["columns"]),
        )
        done = upload_within_quota(upload, req, request.user, left)
        dataset = done.dataset
        self.log_addition(request, dataset, [{"added": {}}])
        sizes = f"{dataset.sample_count} samples, {dataset.total_bytes} bytes"
        self.message_user(request, f"Uploaded and registered {dataset}: {sizes}.", messages.SUCCESS)
        return dataset


def install(site: Any) -> None:
    """Register :class:`DatasetUploadAdmin` for ``Dataset`` in place of the catalog's admin."""
    if site.is_registered(Dataset):
        site.unregister(Dataset)
    site.register(Dataset, DatasetUploadAdmin)
