"""Sessions and logins read without the ORM (accounts.sessions, accounts.middleware,
lib.rows): the same answers as Django's own code, which still decides every case but one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib import auth
from django.contrib.auth import HASH_SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore as DjangoSessionStore
from django.contrib.sessions.models import Session
from django.test import RequestFactory, override_settings
from django.urls import reverse
from django.utils import timezone

from fastgpt_portal.accounts import middleware
from fastgpt_portal.accounts.models import User
from fastgpt_portal.accounts.sessions import SessionStore

pytestmark = pytest.mark.django_db


def test_the_loader_builds_the_user_the_orm_builds(alice, django_user_model):
    alice.last_login = timezone.now()
    alice.first_name = "Alice"
    alice.save()

    loaded = middleware.users.get(alice.pk)
    expected = django_user_model.objects.get(pk=alice.pk)

    fields = [f.attname for f in User._meta.concrete_fields]
    assert {f: getattr(loaded, f) for f in fields} == {f: getattr(expected, f) for f in fields}
    assert type(loaded.last_login) is type(expected.last_login)  # converted, not a string
    assert (loaded._state.adding, loaded._state.db) == (False, expected._state.db)
    assert middleware.users.get(alice.pk + 1000) is None


def test_the_store_reads_what_django_wrote_and_nothing_expired():
    django = DjangoSessionStore()
    django["colour"] = "green"
    django.create()

    assert SessionStore(django.session_key)["colour"] == "green"
    assert SessionStore("x" * 32).load() == {}

    Session.objects.filter(pk=django.session_key).update(
        expire_date=timezone.now() - timedelta(seconds=1)
    )
    expired = SessionStore(django.session_key)
    assert expired.load() == {}
    assert expired.session_key is None, "as Django's: an expired key is not reused"


def logged_in_request(client, user):
    client.force_login(user)
    request = RequestFactory().get("/")
    request.session = SessionStore(client.session.session_key)
    middleware.AuthenticationMiddleware(lambda r: None).process_request(request)
    return request


def test_a_current_login_is_decided_here(client, alice, monkeypatch):
    request = logged_in_request(client, alice)
    monkeypatch.setattr(auth, "get_user", lambda request: pytest.fail("went to Django"))
    assert request.user == alice
    assert request.user.is_authenticated


def test_everything_else_goes_to_django_with_djangos_answer(client, alice, bob, monkeypatch):
    went_to_django = []
    djangos_get_user = auth.get_user

    def spy(request):
        user = djangos_get_user(request)
        went_to_django.append(user)
        return user

    monkeypatch.setattr(auth, "get_user", spy)

    anonymous = RequestFactory().get("/")
    anonymous.session = SessionStore()
    middleware.AuthenticationMiddleware(lambda r: None).process_request(anonymous)
    assert not anonymous.user.is_authenticated

    request = logged_in_request(client, alice)
    User.objects.filter(pk=alice.pk).update(is_active=False)
    assert not request.user.is_authenticated, "a deactivated user"

    request = logged_in_request(client, bob)
    bob.set_password("a-new-password-456")
    bob.save()
    assert not request.user.is_authenticated, "a session from before a password change"
    assert not Session.objects.filter(pk=request.session.session_key).exists(), "flushed"

    assert len(went_to_django) == 3


def test_a_session_signed_with_a_retired_key_is_renewed_by_django(client, alice, settings):
    with override_settings(SECRET_KEY="an-old-key-" * 5):
        request = logged_in_request(client, alice)
        old_hash = request.session[HASH_SESSION_KEY]
        old_key = request.session.session_key
    settings.SECRET_KEY_FALLBACKS = ["an-old-key-" * 5]

    assert middleware.current_user(request) is None, "not current: left to Django"
    assert request.user == alice
    assert request.session[HASH_SESSION_KEY] != old_hash
    assert request.session.session_key != old_key, "Django cycled the key"


def test_pages_work_through_the_middleware(client, alice):
    assert client.get(reverse("chat:home")).status_code == 302
    client.force_login(alice)
    response = client.get(reverse("chat:home"))
    assert response.status_code == 200
    assert response.wsgi_request.user == alice
