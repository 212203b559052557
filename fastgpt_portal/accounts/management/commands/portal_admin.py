"""Create the first admin account if there is none, and say how to log in."""

from __future__ import annotations

import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from fastgpt_portal.accounts.models import User


class Command(BaseCommand):
    help = "Create a first superuser with a random password when none exists."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--password-file",
            default=str(Path(settings.BASE_DIR) / ".admin-password"),
            help="Where the generated password is kept (readable only by you).",
        )

    def handle(self, *args, username: str, password_file: str, **options) -> None:
        path = Path(password_file)
        if User.objects.filter(is_superuser=True).exists():
            hint = f" (its first password is in {path})" if path.exists() else ""
            names = ", ".join(
                User.objects.filter(is_superuser=True).values_list("username", flat=True)[:3]
            )
            self.stdout.write(f"Log in as an existing admin: {names}{hint}.")
            return
        password = secrets.token_urlsafe(12)
        User.objects.create_superuser(username=username, email="", password=password)
        path.write_text(f"{username}\n{password}\n")
        path.chmod(0o600)
        self.stdout.write(
            f"Created the first admin.\n  username: {username}\n  password: {password}\n"
            f"(also saved in {path}; change it in the admin)"
        )
