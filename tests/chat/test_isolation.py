"""Every read is scoped to its owner: another user's object is a 404."""

from __future__ import annotations

import httpx
import pytest

from fastgpt_portal.chat.models import Conversation, Turn
from tests.conftest import session_cookie


@pytest.fixture
def alices_turn(alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Alice's secret")
    return Turn.objects.create(
        conversation=conversation, user=alice, question="Alice's question", status="done",
        answer="Alice's answer",
    )  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/c/{c}/"),
        ("get", "/chat/turns/{t}/"),
        ("post", "/chat/turns/{t}/cancel"),
        ("post", "/chat/turns/{t}/retry"),
        ("post", "/c/{c}/delete"),
        ("post", "/c/{c}/rename"),
    ],
)
def test_it_hides_alices_conversation_from_bob(client, bob, alices_turn, method, url):
    client.force_login(bob)
    url = url.format(c=alices_turn.conversation_id, t=alices_turn.pk)
    response = getattr(client, method)(url, HTTP_HX_REQUEST="true")
    assert response.status_code == 404
    alices_turn.refresh_from_db()
    assert alices_turn.status == "done"
    assert Conversation.objects.get(pk=alices_turn.conversation_id).deleted_at is None


@pytest.mark.django_db
def test_bob_cannot_continue_alices_conversation(client, bob, alices_turn):
    client.force_login(bob)
    response = client.post(
        "/chat/send", {"text": "hi", "conversation": alices_turn.conversation_id}
    )
    assert response.status_code == 404
    assert Turn.objects.count() == 1


@pytest.mark.django_db
def test_alices_history_is_not_in_bobs_lists(client, bob, alices_turn):
    client.force_login(bob)
    for url in ("/", "/history/", "/history/?q=secret"):
        assert "Alice&#x27;s secret" not in client.get(url).text
        assert "Alice's secret" not in client.get(url).text


@pytest.mark.django_db(transaction=True)
def test_bob_gets_404_for_alices_event_stream(bob, alices_turn, portal_server):
    response = httpx.get(
        f"{portal_server.url}/chat/turns/{alices_turn.pk}/events",
        cookies=session_cookie(bob),
        timeout=10,
    )
    assert response.status_code == 404
    assert "Alice" not in response.text


@pytest.mark.django_db(transaction=True)
def test_the_event_stream_needs_a_login(alices_turn, portal_server):
    response = httpx.get(f"{portal_server.url}/chat/turns/{alices_turn.pk}/events", timeout=10)
    assert response.status_code == 401


@pytest.mark.django_db
def test_pages_need_a_login(client):
    for url in ("/", "/history/", "/c/1/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")
