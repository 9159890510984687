"""Delete prediction cache entries not used for N days (and, with a budget, the least recently used)."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from apps.runs.artifacts import ArtifactError
from apps.runs.cache_prune import cache_location, delete, entries, plan


class Command(BaseCommand):
    help = (
        "Delete the prediction cache's entries (HYPERBENCH_PREDICTION_CACHE_URI, file:// or s3://) "
        "not used for --older-than-days days (used: written, or served to a run); with --max-bytes, "
        "then the least recently used until the rest fits. Prints each entry removed and the bytes "
        "freed. Safe while runs read the cache: a sample whose entry is gone is inferred again."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--older-than-days", type=float, required=True, help="delete entries unused this long"
        )
        parser.add_argument("--max-bytes", type=int, default=None, help="then keep at most this many bytes")
        parser.add_argument("--dry-run", action="store_true", help="only list what would be removed")

    def handle(self, *args: Any, **options: Any) -> None:
        days = float(options["older_than_days"])
        budget = options["max_bytes"]
        if days < 0:
            raise CommandError("--older-than-days must be 0 or more.")
        if budget is not None and budget < 0:
            raise CommandError("--max-bytes must be 0 or more.")
        try:
            loc = cache_location()
            found = list(entries(loc))
            doomed = plan(found, older_than=time.time() - days * 86400, max_bytes=budget)
            verb = "would remove" if options["dry_run"] else "removed"
            if not options["dry_run"]:
                delete(loc, doomed.removed)
        except ArtifactError as e:
            raise CommandError(str(e)) from e
        now = time.time()
        for entry in doomed.removed:
            unused = (now - entry.used) / 86400
            self.stdout.write(f"{verb} {entry.uri} ({entry.size} bytes, unused {unused:.1f} days)")
        self.stdout.write(
            f"{loc.uri}: {verb} {len(doomed.removed)} of {len(found)} entries, "
            f"{doomed.freed} bytes freed{' (dry run)' if options['dry_run'] else ''}; "
            f"{doomed.kept} entries ({doomed.kept_bytes} bytes) kept"
        )
