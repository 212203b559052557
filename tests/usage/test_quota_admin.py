"""Admins set quotas in the Django admin."""

from __future__ import annotations

import pytest

from fastgpt_portal.usage.models import Quota

pytestmark = pytest.mark.django_db

ADD = "/admin/usage/quota/add/"
BLANK = {
    "user": "",
    "group": "",
    "turns_per_day": "",
    "points_per_month": "",
    "turns_per_minute": "",
    "max_concurrent": "",
    "note": "",
}


def test_an_admin_can_give_a_user_a_quota(admin_client, alice):
    response = admin_client.post(
        ADD, {**BLANK, "user": alice.pk, "turns_per_day": "10", "note": "trial account"}
    )
    assert response.status_code == 302, response.text
    quota = Quota.objects.get()
    assert (quota.user, quota.scope, quota.turns_per_day) == (alice, "user", 10)
    assert quota.points_per_month is None, "a blank limit is unlimited"


def test_an_admin_can_give_a_group_a_quota_and_set_the_site_default(admin_client):
    from django.contrib.auth.models import Group

    staff = Group.objects.create(name="Staff")
    response = admin_client.post(ADD, {**BLANK, "group": staff.pk, "max_concurrent": "2"})
    assert response.status_code == 302
    response = admin_client.post(ADD, {**BLANK, "points_per_month": "500.5"})
    assert response.status_code == 302
    assert Quota.objects.get(scope="group").group == staff
    assert Quota.objects.get(scope="default").points_per_month == 500.5


def test_the_admin_refuses_a_quota_for_a_user_and_a_group(admin_client, alice):
    from django.contrib.auth.models import Group

    staff = Group.objects.create(name="Staff")
    response = admin_client.post(ADD, {**BLANK, "user": alice.pk, "group": staff.pk})
    assert response.status_code == 200
    assert "A quota belongs to a user or to a group, not both." in response.text
    assert not Quota.objects.exists()


def test_the_admin_refuses_a_second_site_default(admin_client):
    Quota.objects.create(turns_per_day=10)
    response = admin_client.post(ADD, {**BLANK, "turns_per_day": "20"})
    assert response.status_code == 200
    assert "There is already a site-wide default quota" in response.text
    assert Quota.objects.count() == 1


def test_the_admin_refuses_a_second_quota_for_the_same_user(admin_client, alice):
    Quota.objects.create(user=alice, turns_per_day=10)
    response = admin_client.post(ADD, {**BLANK, "user": alice.pk, "turns_per_day": "20"})
    assert response.status_code == 200
    assert Quota.objects.count() == 1


def test_the_admin_refuses_negative_points(admin_client, alice):
    response = admin_client.post(ADD, {**BLANK, "user": alice.pk, "points_per_month": "-1"})
    assert response.status_code == 200
    assert not Quota.objects.exists()


def test_the_admin_form_explains_how_limits_combine(admin_client):
    page = admin_client.get(ADD).text
    assert "the most generous group wins" in page
    assert "Blank means unlimited; 0 stops sending." in page
    assert "site-wide default" in page


def test_the_admin_list_shows_each_users_usage(admin_client, alice, bob, make_turns):
    from datetime import timedelta

    from django.utils import timezone

    Quota.objects.create(user=alice, turns_per_day=10)
    Quota.objects.create(user=bob, turns_per_day=10)
    Quota.objects.create(turns_per_day=5)
    now = timezone.now()
    make_turns(alice, 3, at=now, points=1.25)
    make_turns(bob, 1, at=now - timedelta(days=40), points=99.0)  # not this month
    page = admin_client.get("/admin/usage/quota/").text
    assert "User alice" in page and "User bob" in page
    assert "3 today · 3.75 points this month" in page
    assert "0 today · 0 points this month" in page
    assert "Everyone else (site-wide default)" in page


def test_the_admin_list_costs_the_same_queries_for_many_quotas(
    admin_client, django_user_model, django_assert_max_num_queries
):
    for i in range(30):
        Quota.objects.create(user=django_user_model.objects.create_user(f"user{i}"))
    with django_assert_max_num_queries(12):
        assert admin_client.get("/admin/usage/quota/").status_code == 200
