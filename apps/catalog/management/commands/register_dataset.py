"""Register a dataset version from the command line: ``manage.py register_dataset <uri>``."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.catalog.services import RegistrationError, dataset_register


class Command(BaseCommand):
    help = (
        "Validate and register a dataset version from file:///dir/ (under HYPERBENCH_DATASET_ROOTS) or "
        "s3://bucket/prefix/ (a bucket in HYPERBENCH_S3_BUCKETS). Nothing is registered on any problem."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("uri", help="file:///absolute/dir/ or s3://bucket/prefix/")
        parser.add_argument("--user", default="", help="record this username as the one who registered it")

    def handle(self, *args: Any, **options: Any) -> None:
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user named {options['user']!r}.")
        try:
            done = dataset_register(uri=options["uri"], created_by=user)
        except RegistrationError as e:
            raise CommandError("\n  ".join([str(e), *e.problems])) from e
        dataset = done.dataset
        if not done.created:
            self.stdout.write(done.message)
        self.stdout.write(
            f"{dataset} (id {dataset.pk}): {dataset.sample_count} samples, {dataset.total_bytes} bytes, "
            f"manifest {dataset.manifest_sha256} from {' and '.join(dataset.sources)}"
        )
