"""manage.py rotate_keys: app keys move to the first FIELD_ENCRYPTION_KEY, row by row."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from fastgpt_portal.upstream.models import App

pytestmark = pytest.mark.django_db

OLD = Fernet.generate_key().decode()
NEW = Fernet.generate_key().decode()
KEY = "fastgpt-rotationTestKey0000000000000000000001"


def rotate_keys(*args: str) -> str:
    out = io.StringIO()
    call_command("rotate_keys", *args, stdout=out)
    return out.getvalue()


def stored_token(app: App) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM upstream_app WHERE id = %s", [app.pk])
        return cursor.fetchone()[0]


def test_it_re_encrypts_under_the_new_key_so_the_old_one_can_go(settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    app = App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9", api_key=KEY)

    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    # During the rotation the app stays readable: any listed key decrypts.
    assert App.objects.get(pk=app.pk).api_key == KEY
    assert "Rotated 1 key(s)" in rotate_keys()

    settings.FIELD_ENCRYPTION_KEYS = [NEW]
    assert App.objects.get(pk=app.pk).api_key == KEY
    assert Fernet(NEW.encode()).decrypt(stored_token(app).encode()).decode() == KEY


def test_without_rotation_the_old_key_cannot_be_dropped(settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    app = App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9", api_key=KEY)
    settings.FIELD_ENCRYPTION_KEYS = [NEW]
    app = App.objects.get(pk=app.pk)  # loading works: the key is decrypted when it is read
    with pytest.raises(ValueError, match="cannot be decrypted"):
        app.api_key  # noqa: B018


def test_it_is_idempotent(settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    app = App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9", api_key=KEY)
    App.objects.create(name="Legal", base_url="http://127.0.0.1:9", api_key=KEY + "2")
    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    assert "Rotated 2 key(s) to the first FIELD_ENCRYPTION_KEY; 0 already used it." in (
        rotate_keys()
    )
    token = stored_token(app)
    assert "Rotated 0 key(s) to the first FIELD_ENCRYPTION_KEY; 2 already used it." in (
        rotate_keys()
    )
    assert stored_token(app) == token, "a second run leaves the rows alone"


def test_a_dry_run_changes_nothing(settings):
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    app = App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9", api_key=KEY)
    token = stored_token(app)
    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    assert "Would rotate 1 key(s)" in rotate_keys("--dry-run")
    assert stored_token(app) == token


def test_it_rotates_the_rest_and_names_a_key_it_cannot_read(settings):
    lost = Fernet.generate_key().decode()
    settings.FIELD_ENCRYPTION_KEYS = [lost]
    unreadable = App.objects.create(name="Lost", base_url="http://127.0.0.1:9", api_key=KEY)
    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    readable = App.objects.create(name="Kept", base_url="http://127.0.0.1:9", api_key=KEY)

    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    with pytest.raises(CommandError, match=rf"upstream.App {unreadable.pk}\)") as failure:
        rotate_keys()
    assert KEY not in str(failure.value)
    settings.FIELD_ENCRYPTION_KEYS = [NEW]
    assert App.objects.get(pk=readable.pk).api_key == KEY


def test_it_does_not_overwrite_a_key_changed_during_the_rotation(settings, monkeypatch):
    # The UPDATE compares the ciphertext it read: an admin's newer key wins over the rotation.
    from fastgpt_portal.upstream.management.commands import rotate_keys as command

    settings.FIELD_ENCRYPTION_KEYS = [OLD]
    app = App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9", api_key=KEY)
    settings.FIELD_ENCRYPTION_KEYS = [NEW, OLD]
    real_rotate = command.rotate

    def rotate_while_an_admin_saves(token: str) -> str:
        App.objects.filter(pk=app.pk).update(api_key="fastgpt-newerKeyFromTheAdmin")
        return real_rotate(token)

    monkeypatch.setattr(command, "rotate", rotate_while_an_admin_saves)
    assert "Rotated 0 key(s)" in rotate_keys()
    assert App.objects.get(pk=app.pk).api_key == "fastgpt-newerKeyFromTheAdmin"
