"""What a user with a quota sees on the chat page, and that a refused message leaves no trace."""

from __future__ import annotations

import re

import pytest

from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.usage.models import Quota

pytestmark = pytest.mark.django_db


def quota_region(html: str) -> str:
    """The text of the #quota region, tags stripped."""
    match = re.search(r'<div id="quota"[^>]*>(.*?)</div>', html, re.S)
    assert match, "no #quota region"
    return re.sub(r"<[^>]+>", "", match.group(1)).strip()


def send(client, app, text="hello", conversation=None):
    data = {"text": text, "app": app.slug}
    if conversation:
        data["conversation"] = conversation.pk
    return client.post("/chat/send", data, HTTP_HX_REQUEST="true")


def test_a_refused_message_shows_the_reason_and_stores_nothing(client, alice, demo_app):
    Quota.objects.create(user=alice, turns_per_day=0)
    client.force_login(alice)
    response = send(client, demo_app)
    assert response.status_code == 422
    assert 'id="composer-error"' in response.text
    assert "Sending is switched off for your account" in response.text
    assert Turn.objects.count() == 0
    assert Conversation.objects.count() == 0, "no empty conversation is left behind"


def test_it_refuses_the_eleventh_message_of_the_day_in_a_conversation(client, alice, demo_app):
    Quota.objects.create(user=alice, turns_per_day=10)
    client.force_login(alice)
    conversation = Conversation.objects.create(user=alice, app=demo_app)
    for i in range(10):
        assert send(client, demo_app, f"question {i}", conversation).status_code == 200
    response = send(client, demo_app, "one too many", conversation)
    assert response.status_code == 422
    assert "You have reached your daily limit of 10 messages." in response.text
    assert "You can send again tomorrow from 00:00 (UTC)." in response.text
    assert not Turn.objects.filter(question="one too many").exists()
    assert Turn.objects.filter(user=alice).count() == 10


def test_without_javascript_a_refusal_is_a_plain_error(client, alice, demo_app):
    Quota.objects.create(user=alice, max_concurrent=0)
    client.force_login(alice)
    response = client.post("/chat/send", {"text": "hi", "app": demo_app.slug})
    assert response.status_code == 400
    assert "Sending is switched off" in response.text
    assert Turn.objects.count() == 0


def test_the_chat_page_shows_the_remaining_quota(client, alice, demo_app):
    Quota.objects.create(user=alice, turns_per_day=10, points_per_month=100, max_concurrent=2)
    conversation = Conversation.objects.create(user=alice, app=demo_app)
    for points in (10.0, 2.5, 0.0):
        Turn.objects.create(
            conversation=conversation, user=alice, question="q", status="done", points=points
        )
    client.force_login(alice)
    page = client.get("/").text
    assert quota_region(page) == (
        "Your quota: 7 of 10 messages left today · 87.5 of 100 FastGPT points left this month"
        " · 2 answers at a time"
    )
    assert page.index('id="quota"') > page.index('id="composer"'), "it sits in the composer"


def test_a_user_without_limits_sees_no_quota(client, alice, demo_app):
    client.force_login(alice)
    assert quota_region(client.get("/").text) == "", "the region is there for later refreshes"


def test_alice_sees_her_own_quota_and_usage_not_bobs(client, alice, bob, demo_app):
    Quota.objects.create(user=bob, turns_per_day=3)
    Quota.objects.create(user=alice, turns_per_day=50)
    conversation = Conversation.objects.create(user=bob, app=demo_app)
    Turn.objects.create(conversation=conversation, user=bob, question="q")
    client.force_login(alice)
    assert quota_region(client.get("/").text) == "Your quota: 50 of 50 messages left today"


def test_the_quota_refreshes_after_each_message(client, alice, demo_app):
    Quota.objects.create(user=alice, turns_per_day=10)
    client.force_login(alice)
    response = send(client, demo_app)
    assert response.status_code == 200
    assert 'hx-swap-oob="true">' in response.text.split('id="quota"', 1)[-1].split("\n", 1)[0]
    assert quota_region(response.text) == "Your quota: 9 of 10 messages left today"
