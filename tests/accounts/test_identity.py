from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from fastgpt_portal.accounts.models import Identity, validate_custom_uid
from fastgpt_portal.accounts.services import identity_for

pytestmark = pytest.mark.django_db


def test_it_uses_the_username_by_default(alice):
    assert identity_for(alice).custom_uid == "alice"


def test_it_uses_the_email_when_asked(alice):
    assert identity_for(alice, strategy="email").custom_uid == "alice@example.org"


def test_it_can_be_opaque(alice):
    uid = identity_for(alice, strategy="opaque").custom_uid
    assert "alice" not in uid
    assert uid.startswith("u-") and len(uid) == 26


def test_it_is_stable_across_renames(alice):
    uid = identity_for(alice).custom_uid
    alice.username = "alice.smith"
    alice.save()
    alice.refresh_from_db()
    assert identity_for(alice).custom_uid == uid
    assert Identity.objects.count() == 1


def test_a_clash_gets_a_suffix(django_user_model):
    first = django_user_model.objects.create_user("sam/ops", "a@example.org")
    second = django_user_model.objects.create_user("samops", "b@example.org")
    assert identity_for(first).custom_uid == "samops"
    assert identity_for(second).custom_uid == "samops-2"


def test_it_strips_what_fastgpt_refuses(django_user_model):
    user = django_user_model.objects.create_user("a|b\\c", "x@example.org")
    uid = identity_for(user).custom_uid
    assert uid == "abc"
    validate_custom_uid(uid)


def test_it_stays_within_255_bytes(django_user_model):
    user = django_user_model.objects.create_user("é" * 140, "x@example.org")
    uid = identity_for(user).custom_uid
    assert len(uid.encode()) <= 255
    validate_custom_uid(uid)


@pytest.mark.parametrize("bad", ["", "a|b", "a/b", "a\\b", "x" * 256, "é" * 128, "a\x00b"])
def test_the_validator_rejects_unsafe_values(bad):
    with pytest.raises(ValidationError):
        validate_custom_uid(bad)


def test_admins_can_override_it(admin_client, alice):
    identity = identity_for(alice)
    response = admin_client.post(
        f"/admin/accounts/identity/{identity.pk}/change/",
        {"user": alice.pk, "custom_uid": "emp-00042"},
    )
    assert response.status_code == 302, response.content
    identity.refresh_from_db()
    assert identity.custom_uid == "emp-00042"


def test_the_admin_shows_the_custom_uid(admin_client, alice):
    identity_for(alice)
    assert "alice" in admin_client.get("/admin/accounts/user/").text
