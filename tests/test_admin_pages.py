"""What an admin sees in the admin when a run fails: the reason, on the list and on the run's page."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import User
from django.test import Client

from apps.catalog.models import Dataset, ModelImage
from apps.quotas.models import UserQuota
from apps.runs.models import Experiment, Run
from tests.test_dataset_upload import layout_files, left_on_disk, make_zip

REASON = "The model image hyperbench/ghost:1 does not exist on host gpu-7: build or load it there."


def _failed_run(owner: User) -> Run:
    dataset = Dataset.objects.create(
        name="docs", version="1", task="ocr", source_uri="file:///srv/docs/1/",
        manifest_sha256="c" * 64, sample_count=3,
    )  # fmt: skip
    model = ModelImage.objects.create(name="ghost", image="hyperbench/ghost:1", digest="sha256:" + "d" * 64)
    experiment = Experiment.objects.create(name="try", model=model, dataset=dataset, owner=owner)
    return Run.objects.create(
        experiment=experiment, state=Run.State.FAILED, spec={}, manifest_sha256="c" * 64, error_reason=REASON
    )


def test_an_admin_sees_why_a_run_failed_in_the_list_and_on_its_page(admin_user: User) -> None:
    run = _failed_run(admin_user)
    client = Client()
    client.force_login(admin_user)

    listing = client.get("/admin/runs/run/")
    page = client.get(f"/admin/runs/run/{run.pk}/change/")

    assert listing.status_code == 200
    assert page.status_code == 200
    assert REASON in listing.content.decode()
    assert REASON in page.content.decode()


def test_the_admin_is_closed_to_users_who_are_not_staff(alice: User) -> None:
    run = _failed_run(alice)
    client = Client()
    client.force_login(alice)

    page = client.get(f"/admin/runs/run/{run.pk}/change/")

    assert page.status_code == 302
    assert "/admin/login/" in page["Location"]


@pytest.fixture
def _no_broker(monkeypatch: pytest.MonkeyPatch) -> mock.MagicMock:
    app = mock.MagicMock(name="celery")
    monkeypatch.setattr("apps.runs.dispatch._celery", lambda: app)
    return app


def _experiments(owner: User) -> list[Experiment]:
    dataset = Dataset.objects.create(
        name="forms", version="1", task="ocr", source_uri="file:///srv/forms/1/",
        manifest_sha256="e" * 64, sample_count=4,
    )  # fmt: skip
    model = ModelImage.objects.create(name="reader", image="hyperbench/reader:1", digest="sha256:" + "f" * 64)
    return [
        Experiment.objects.create(name=name, model=model, dataset=dataset, owner=owner)
        for name in ("first", "second", "third")
    ]


@pytest.mark.usefixtures("_no_broker")
def test_start_a_run_asks_first_with_reuse_ticked_then_starts_one_run_of_each(admin_user: User) -> None:
    first, _, third = _experiments(admin_user)
    client = Client()
    client.force_login(admin_user)
    chosen = {"action": "start_run", "_selected_action": [first.pk, third.pk]}

    page = client.post("/admin/runs/experiment/", chosen)

    assert page.status_code == 200
    html = page.content.decode()
    assert "first: reader on forms" in html
    assert "third: reader on forms" in html
    assert "second:" not in html
    box = re.search(r'<input type="checkbox" name="reuse"[^>]*>', html)
    assert box is not None
    assert "checked" in box.group(0)
    assert "Reuse predictions already computed (recommended; untick for timing benchmarks)" in html
    assert 'value="Confirm"' in html
    assert not Run.objects.exists()
    # The form posts back what the page holds: the chosen ids, the action, the confirmation.
    hidden = dict.fromkeys(re.findall(r'<input type="hidden" name="(\w+)" value="(\w+)"', html))
    assert {("_selected_action", str(first.pk)), ("_selected_action", str(third.pk))} <= set(hidden)
    assert {("action", "start_run"), ("confirm", "yes")} <= set(hidden)

    done = client.post("/admin/runs/experiment/", {**chosen, "confirm": "yes", "reuse": "on"}, follow=True)

    runs = list(Run.objects.order_by("pk"))
    assert [r.experiment_id for r in runs] == [first.pk, third.pk]
    assert all(r.spec["cache"]["reuse"] is True for r in runs)
    text = done.content.decode()
    assert f"Started run {runs[0].pk} of first (reader on forms@1): reusing cached predictions." in text


@pytest.mark.usefixtures("_no_broker")
def test_start_a_run_with_the_reuse_box_unticked_infers_every_sample(admin_user: User) -> None:
    first, _, _ = _experiments(admin_user)
    client = Client()
    client.force_login(admin_user)

    # An unticked checkbox sends nothing.
    done = client.post(
        "/admin/runs/experiment/",
        {"action": "start_run", "_selected_action": [first.pk], "confirm": "yes"},
        follow=True,
    )

    run = Run.objects.get()
    assert run.spec["cache"]["reuse"] is False
    said = done.content.decode()
    assert f"Started run {run.pk} of first (reader on forms@1): inferring every sample." in said
    listing = client.get("/admin/runs/experiment/").content.decode()
    actions = re.findall(r'<option value="(\w+)"', listing)
    assert "start_run" in actions
    assert "start_run_without_reuse" not in actions


# --- Datasets > "Upload a dataset": the API's upload service behind an admin form ----------------

UPLOAD_URL = "/admin/catalog/dataset/upload/"


@pytest.fixture
def uploads(settings: Any, tmp_path: Path) -> Path:
    """A dataset root with the uploads root inside it (as tests/test_dataset_upload.py sets them)."""
    root = (tmp_path / "datasets").resolve()
    root.mkdir()
    settings.HYPERBENCH_DATASET_ROOTS = [root]
    settings.HYPERBENCH_UPLOADS_ROOT = root / "uploads"
    return root / "uploads"


def _upload_page(client: Client, archive: Path, **fields: str) -> Any:
    with open(archive, "rb") as handle:
        return client.post(UPLOAD_URL, {"file": handle, "format": "layout", **fields})


def test_a_staff_upload_through_the_admin_registers_and_redirects_to_the_dataset(
    uploads: Path, admin_user: User, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(admin_user)
    listing = client.get("/admin/catalog/dataset/").content.decode()
    assert f'href="{UPLOAD_URL}"' in listing
    assert "Upload a dataset" in listing
    page = client.get(UPLOAD_URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert '<option value="vlmevalkit-tsv">' in html

    done = _upload_page(client, make_zip(tmp_path / "up.zip", layout_files("adm", "3")))

    dataset = Dataset.objects.get()
    assert done.status_code == 302, done.content.decode()[-2000:]
    assert done["Location"] == f"/admin/catalog/dataset/{dataset.pk}/change/"
    assert (dataset.name, dataset.version, dataset.sample_count) == ("adm", "3", 2)
    assert dataset.source_uri == (uploads / "adm" / "3").as_uri() + "/"
    assert dataset.created_by == admin_user
    shown = client.get(done["Location"]).content.decode()
    assert "Uploaded and registered adm@3: 2 samples" in shown
    assert not list((uploads / ".staging").iterdir())


def test_a_hostile_archive_is_refused_on_the_form_with_the_services_message(
    uploads: Path, admin_user: User, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(admin_user)
    bad = make_zip(tmp_path / "t.zip", {**layout_files(), "../../evil.txt": b"x"})

    page = _upload_page(client, bad)

    assert page.status_code == 200
    html = page.content.decode()
    assert "The archive is refused: member &#x27;../../evil.txt&#x27; has a &#x27;..&#x27; segment" in html
    assert 'class="errornote"' in html
    assert not Dataset.objects.exists()
    assert left_on_disk(uploads) == []
    assert not list((uploads / ".staging").iterdir())


def test_the_admin_upload_streams_to_the_capped_handler_and_keeps_the_quota(
    uploads: Path, settings: Any, admin_user: User, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(admin_user)
    settings.HYPERBENCH_UPLOAD_MAX_BYTES = 50_000
    big = tmp_path / "big.tar"
    big.write_bytes(b"\0" * 60_000)
    page = _upload_page(client, big)
    assert "over 50000 bytes (HYPERBENCH_UPLOAD_MAX_BYTES)" in page.content.decode()
    assert not list((uploads / ".staging").iterdir())

    settings.HYPERBENCH_UPLOAD_MAX_BYTES = 10_000_000
    UserQuota.objects.create(user=admin_user, upload_bytes=5_000)
    files = {**layout_files("q"), "images/pad.bin": os.urandom(6_000)}
    page = _upload_page(client, make_zip(tmp_path / "q.zip", files))
    assert page.status_code == 200
    assert "Quota upload_bytes" in page.content.decode()
    assert not Dataset.objects.exists()
    assert left_on_disk(uploads) == []


def test_the_upload_page_is_closed_to_users_who_are_not_staff_and_checks_csrf(
    uploads: Path, alice: User, admin_user: User, tmp_path: Path
) -> None:
    client = Client()
    client.force_login(alice)
    archive = make_zip(tmp_path / "up.zip", layout_files())
    for answer in (client.get(UPLOAD_URL), _upload_page(client, archive)):
        assert answer.status_code == 302
        assert "/admin/login/" in answer["Location"]
    assert not Dataset.objects.exists()

    staff = Client(enforce_csrf_checks=True)
    staff.force_login(admin_user)
    assert _upload_page(staff, archive).status_code == 403, "no CSRF token: refused"
    assert not Dataset.objects.exists()
