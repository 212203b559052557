"""App keys: encrypted at rest, masked in the admin, read from stdin by portal_app add."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from fastgpt_portal.upstream.double import DOUBLE_APP_KEY
from fastgpt_portal.upstream.models import App

pytestmark = pytest.mark.django_db

SECRET = "fastgpt-k3yK3yK3yPretendSecretForTests0001"


def make_app(url: str = "http://127.0.0.1:9", key: str = SECRET) -> App:
    return App.objects.create(name="Helpdesk", base_url=url, api_key=key)


def test_the_key_is_encrypted_at_rest():
    app = make_app()
    with connection.cursor() as cursor:
        cursor.execute("SELECT api_key FROM upstream_app WHERE id = %s", [app.pk])
        (raw,) = cursor.fetchone()
    assert SECRET not in raw
    assert raw.startswith("gAAAA"), "Fernet ciphertext"
    assert App.objects.get(pk=app.pk).api_key == SECRET


def test_the_admin_shows_only_a_masked_key(admin_client):
    app = make_app()
    for url in ("/admin/upstream/app/", f"/admin/upstream/app/{app.pk}/change/"):
        page = admin_client.get(url).text
        assert SECRET not in page
        assert SECRET[8:20] not in page
    assert app.masked_key in admin_client.get("/admin/upstream/app/").text


def test_the_admin_keeps_the_key_when_the_field_is_left_empty(admin_client):
    app = make_app()
    response = admin_client.post(
        f"/admin/upstream/app/{app.pk}/change/",
        {"name": "Helpdesk 2", "slug": app.slug, "base_url": app.base_url, "api_key": "",
         "fastgpt_app_id": "", "enabled": "on"},
    )  # fmt: skip
    assert response.status_code == 302, response.content
    app.refresh_from_db()
    assert app.name == "Helpdesk 2" and app.api_key == SECRET


def test_repr_never_shows_the_key():
    assert SECRET not in repr(make_app())


def run_portal_app(*args: str, stdin: str = "") -> str:
    import sys

    out = io.StringIO()
    old = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        call_command("portal_app", *args, stdout=out)
    finally:
        sys.stdin = old
    return out.getvalue()


def test_add_reads_the_key_from_stdin_and_checks_it(fastgpt):
    out = run_portal_app(
        "add", "--name", "Helpdesk", "--base-url", fastgpt.url, stdin=DOUBLE_APP_KEY + "\n"
    )
    app = App.objects.get(slug="helpdesk")
    assert app.api_key == DOUBLE_APP_KEY
    assert "Created app 'helpdesk'" in out
    assert "OK" in out and "app key" in out.lower()
    assert DOUBLE_APP_KEY not in out


def test_add_updates_an_existing_app(fastgpt):
    run_portal_app(
        "add", "--name", "Helpdesk", "--base-url", fastgpt.url, "--no-check", stdin="k1\n"
    )
    run_portal_app(
        "add", "--name", "Helpdesk", "--base-url", fastgpt.url, "--no-check", stdin="k2\n"
    )
    assert App.objects.get().api_key == "k2"


def test_add_refuses_an_empty_key():
    with pytest.raises(CommandError, match="No key"):
        run_portal_app("add", "--name", "X", "--base-url", "http://127.0.0.1:9", stdin="")


def test_check_says_in_words_when_fastgpt_rejects_the_key(fastgpt):
    make_app(url=fastgpt.url, key="fastgpt-unknownkey")
    with pytest.raises(CommandError):
        run_portal_app("check")
    app = App.objects.get()
    assert not app.healthy
    assert app.health_message


def test_check_says_when_fastgpt_cannot_be_reached():
    make_app(url="http://127.0.0.1:9")
    with pytest.raises(CommandError):
        run_portal_app("check")
    assert not App.objects.get().healthy


def test_list_masks_keys():
    make_app()
    out = run_portal_app("list")
    assert "helpdesk" in out and SECRET not in out


def test_listing_apps_decrypts_no_key(settings):
    make_app()
    settings.FIELD_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]  # the stored key is lost
    app = App.objects.get()
    assert app.name == "Helpdesk", "an app whose key is never read needs no decryption"
    with pytest.raises(ValueError, match="cannot be decrypted"):
        app.api_key  # noqa: B018


@pytest.mark.parametrize("bad", ["fastgpt-abc def", "fastgpt-abcé", "fastgpt-abc\tdef"])
def test_add_refuses_a_key_that_cannot_travel_in_a_header(bad):
    with pytest.raises(CommandError, match="printable ASCII"):
        run_portal_app(
            "add", "--name", "X", "--base-url", "http://127.0.0.1:9", "--no-check", stdin=bad
        )
    assert not App.objects.exists()
