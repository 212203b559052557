from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.utils.text import slugify

from fastgpt_portal.lib.crypto import EncryptedTextField, mask


def validate_api_key(value: str) -> None:
    """A key travels in an HTTP header: printable ASCII, no spaces (fastgpt-api.md §1.1)."""
    if not value or any(not (33 <= ord(ch) <= 126) for ch in value):
        # Never echo the value: it is the secret.
        raise ValidationError("The key must be printable ASCII without spaces (fastgpt-…).")


class AppQuerySet(models.QuerySet["App"]):
    def enabled(self) -> AppQuerySet:
        return self.filter(enabled=True)


class App(models.Model):
    """One FastGPT app the portal speaks to, with its key (encrypted at rest)."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True, blank=True)
    base_url = models.CharField(
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="FastGPT's API root, e.g. https://fastgpt.example.org/api",
    )
    api_key = EncryptedTextField(
        validators=[validate_api_key],
        help_text="An app key (fastgpt-…), or a global key together with the App ID.",
    )
    fastgpt_app_id = models.CharField(
        "FastGPT app ID",
        max_length=64,
        blank=True,
        help_text="Only for a global (team) key, which needs the app named in each request.",
    )
    enabled = models.BooleanField(default=True)
    is_demo = models.BooleanField(
        default=False, help_text="Answered by the built-in FastGPT double, not a real FastGPT."
    )
    # Health: set when FastGPT rejects the key or the team is out of points, so admins see it.
    healthy = models.BooleanField(default=True)
    health_message = models.CharField(max_length=500, blank=True)
    health_checked = models.DateTimeField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    objects = AppQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        # The key must never appear in a repr, a traceback's locals or a log line.
        return f"<App {self.pk} {self.slug!r}>"

    def save(self, *args, **kwargs) -> None:
        if not self.slug:
            self.slug = slugify(self.name)[:100] or "app"
        self.base_url = self.base_url.rstrip("/")
        super().save(*args, **kwargs)

    @property
    def masked_key(self) -> str:
        return mask(self.api_key)
