"""Writes to App. The key is read from the caller, never from a command-line argument."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.utils import timezone
from django.utils.text import slugify

from fastgpt_portal.upstream.models import App


def app_upsert(
    *,
    name: str,
    base_url: str,
    api_key: str,
    fastgpt_app_id: str = "",
    slug: str = "",
    is_demo: bool = False,
) -> tuple[App, bool]:
    """Create the app, or update the one with the same slug. Returns (app, created)."""
    api_key = api_key.strip()
    if not api_key:
        raise ValidationError("The app key is empty.")
    slug = slug or slugify(name)
    app = App.objects.filter(slug=slug).first()
    created = app is None
    if created:
        app = App(slug=slug)
    app.name = name
    app.base_url = base_url
    app.api_key = api_key
    app.fastgpt_app_id = fastgpt_app_id
    app.is_demo = is_demo
    app.enabled = True
    app.full_clean()
    app.save()
    return app, created


def app_record_check(*, app: App, ok: bool, message: str) -> None:
    App.objects.filter(pk=app.pk).update(
        healthy=ok, health_message="" if ok else message[:500], health_checked=timezone.now()
    )
