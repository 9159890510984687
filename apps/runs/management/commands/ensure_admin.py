"""Create or update a staff superuser and print its API token (for the demo)."""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = (
        "Create or update a superuser; the password comes from $HYPERBENCH_ADMIN_PASSWORD. Prints the token."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")

    def handle(self, *args: Any, **options: Any) -> None:
        password = os.environ.get("HYPERBENCH_ADMIN_PASSWORD", "")
        if len(password) < 8:
            raise CommandError("Set HYPERBENCH_ADMIN_PASSWORD (8 characters or more).")
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
