"""Import a dataset in one of the import formats on the server: ``manage.py import_dataset``.

For large local files (no upload size cap, no HTTP request to outlive): the importer writes the
project's layout under ``--out`` (default ``<HYPERBENCH_UPLOADS_ROOT>/<name>/<version>/``), and
``--register`` registers it like ``register_dataset``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.catalog.importers import IMPORTERS, ImportFailure, Options, run_import
from apps.catalog.models import Dataset
from apps.catalog.services import RegistrationError, dataset_register


class Command(BaseCommand):
    help = (
        "Convert a dataset (a file or a folder) from an import format into the project's layout, "
        "and with --register register it. Formats: " + ", ".join(IMPORTERS) + "."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # --version names the dataset's version here, not Django's.
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("format", choices=sorted(IMPORTERS))
        parser.add_argument("path", help="the file (.tsv, .parquet, .json, .jsonl, .pdf) or folder")
        parser.add_argument("--name", required=True)
        parser.add_argument("--version", dest="dataset_version", required=True)
        parser.add_argument("--task", required=True, choices=[t.value for t in Dataset.Task])
        parser.add_argument("--columns", default="", help='a JSON mapping, e.g. {"answer": "gt"}')
        parser.add_argument("--description", default="")
        parser.add_argument("--license", default="")
        parser.add_argument("--out", default="", help="the new version's folder (must not exist)")
        parser.add_argument("--register", action="store_true", help="register the version once written")
        parser.add_argument("--user", default="", help="record this username as the one who registered it")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            columns = json.loads(options["columns"]) if options["columns"] else {}
        except ValueError as e:
            raise CommandError(f"--columns is not JSON: {e}") from e
        if not isinstance(columns, dict):
            raise CommandError("--columns must be a JSON object")
        name, version = options["name"], options["dataset_version"]
        out = (
            Path(options["out"])
            if options["out"]
            else Path(settings.HYPERBENCH_UPLOADS_ROOT) / name / version
        )
        if out.exists():
            raise CommandError(f"{out} exists already; dataset versions are immutable.")
        opts = Options(
            name=name,
            version=version,
            task=options["task"],
            columns={str(k): str(v) for k, v in columns.items()},
            description=options["description"],
            license=options["license"],
        )
        try:
            count = run_import(options["format"], Path(options["path"]), out, opts)
        except ImportFailure as e:
            raise CommandError("\n  ".join([str(e), *e.problems])) from e
        self.stdout.write(f"wrote {count} samples of {name}@{version} to {out}")
        if not options["register"]:
            return
        user = None
        if options["user"]:
            user = get_user_model().objects.filter(username=options["user"]).first()
            if user is None:
                raise CommandError(f"No user named {options['user']!r}.")
        try:
            done = dataset_register(uri=out.resolve().as_uri() + "/", created_by=user)
        except RegistrationError as e:
            raise CommandError("\n  ".join([str(e), *e.problems])) from e
        self.stdout.write(done.message)
