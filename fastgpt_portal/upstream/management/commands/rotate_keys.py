"""rotate_keys: re-encrypt every stored secret under the first FIELD_ENCRYPTION_KEY.

Rotation without downtime:
  1. Generate a key and deploy every process with FIELD_ENCRYPTION_KEY=<new>,<old>. From then
     on new secrets are written under <new>, and all of them stay readable (MultiFernet tries
     every listed key).
  2. Run `manage.py rotate_keys`. Each row is updated on its own, so nothing is locked for long.
  3. Deploy with FIELD_ENCRYPTION_KEY=<new> only.
Running it again finds nothing to do.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections, router

from fastgpt_portal.lib.crypto import EncryptedTextField, rotate


def encrypted_fields() -> list[tuple[type, EncryptedTextField]]:
    """Every (model, field) that stores a secret; App.api_key today."""
    return [
        (model, field)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if isinstance(field, EncryptedTextField)
    ]


class Command(BaseCommand):
    help = "Re-encrypt stored app keys under the first key of FIELD_ENCRYPTION_KEY."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="Only count what would be rotated."
        )

    def handle(self, *args, dry_run: bool = False, **options) -> None:
        current = Fernet(settings.FIELD_ENCRYPTION_KEYS[0].encode())
        rotated = current_count = 0
        unreadable: list[str] = []
        for model, field in encrypted_fields():
            connection = connections[router.db_for_write(model)]
            qn = connection.ops.quote_name
            table, column, pk = (
                qn(model._meta.db_table), qn(field.column), qn(model._meta.pk.column)
            )  # fmt: skip
            # Raw SQL: the field decrypts on read and encrypts on write, and here the
            # ciphertext itself is what is read and compared.
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {pk}, {column} FROM {table} WHERE {column} <> ''")  # noqa: S608
                rows = cursor.fetchall()
            for row_pk, token in rows:
                label = f"{model._meta.label} {row_pk}"
                try:
                    current.decrypt(token.encode())
                    current_count += 1
                    continue  # already under the first key
                except InvalidToken:
                    pass
                try:
                    new_token = rotate(token)
                except InvalidToken:
                    unreadable.append(label)
                    continue
                if dry_run:
                    rotated += 1
                    continue
                with connection.cursor() as cursor:
                    # Only if nobody changed the row meanwhile (an admin saving a new key).
                    cursor.execute(
                        f"UPDATE {table} SET {column} = %s WHERE {pk} = %s AND {column} = %s",  # noqa: S608
                        [new_token, row_pk, token],
                    )
                    rotated += cursor.rowcount
        verb = "Would rotate" if dry_run else "Rotated"
        self.stdout.write(
            f"{verb} {rotated} key(s) to the first FIELD_ENCRYPTION_KEY; "
            f"{current_count} already used it."
        )
        if unreadable:
            raise CommandError(
                f"{len(unreadable)} stored key(s) cannot be decrypted with any listed key "
                f"({', '.join(unreadable)}): add the key they were written with to "
                "FIELD_ENCRYPTION_KEY, or enter those app keys again in the admin."
            )
