"""What an admin sees in the admin when a run fails: the reason, on the list and on the run's page."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser
from django.test import Client

from apps.catalog.models import Dataset, ModelImage
from apps.runs.models import Experiment, Run

REASON = "The model image hyperbench/ghost:1 does not exist on host gpu-7: build or load it there."


def _failed_run(owner: AbstractUser) -> Run:
    dataset = Dataset.objects.create(
        name="docs", version="1", task="ocr", source_uri="file:///srv/docs/1/",
        manifest_sha256="c" * 64, sample_count=3,
    )  # fmt: skip
    model = ModelImage.objects.create(name="ghost", image="hyperbench/ghost:1", digest="sha256:" + "d" * 64)
    experiment = Experiment.objects.create(name="try", model=model, dataset=dataset, owner=owner)
    return Run.objects.create(
        experiment=experiment, state=Run.State.FAILED, spec={}, manifest_sha256="c" * 64, error_reason=REASON
    )


def test_an_admin_sees_why_a_run_failed_in_the_list_and_on_its_page(admin_user: AbstractUser) -> None:
    run = _failed_run(admin_user)
    client = Client()
    client.force_login(admin_user)

    listing = client.get("/admin/runs/run/")
    page = client.get(f"/admin/runs/run/{run.pk}/change/")

    assert listing.status_code == 200 and page.status_code == 200
    assert REASON in listing.content.decode()
    assert REASON in page.content.decode()


def test_the_admin_is_closed_to_users_who_are_not_staff(alice: AbstractUser) -> None:
    run = _failed_run(alice)
    client = Client()
    client.force_login(alice)

    page = client.get(f"/admin/runs/run/{run.pk}/change/")

    assert page.status_code == 302 and "/admin/login/" in page["Location"]
