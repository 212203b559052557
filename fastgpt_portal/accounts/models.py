from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.exceptions import ValidationError
from django.db import models

FORBIDDEN_UID_CHARS = "|/\\"
MAX_UID_BYTES = 255


def validate_custom_uid(value: str) -> None:
    """FastGPT's rules for a user id: no | / \\, at most 255 bytes (fastgpt-api.md §5)."""
    if not value:
        raise ValidationError("The customUid cannot be empty.")
    if any(ch in value for ch in FORBIDDEN_UID_CHARS):
        raise ValidationError("The customUid cannot contain |, / or \\.")
    if len(value.encode()) > MAX_UID_BYTES:
        raise ValidationError("The customUid must be at most 255 bytes.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValidationError("The customUid cannot contain control characters.")


class User(AbstractUser):
    """Our own user model from day one, so SSO fields can be added without a painful swap."""

    class Meta:
        db_table = "accounts_user"


class Identity(models.Model):
    """The user's stable identity at FastGPT: sent as customUid with every message.

    Created on first use by accounts.services.identity_for(); never changed silently (a
    renamed user keeps it). Admins may override it in the admin.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identity"
    )
    custom_uid = models.CharField(
        max_length=255, unique=True, validators=[validate_custom_uid], verbose_name="customUid"
    )
    strategy = models.CharField(max_length=16, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return self.custom_uid
