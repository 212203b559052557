"""The answer stream's ASGI front (chat.asgi_stream): it serves a logged-in user's own turn
without Django's request cycle, and hands every other request to Django unchanged.

In-process, with the real database; the front's Django is replaced by a recorder so each test
sees who answered. Streaming itself, through uvicorn, is covered by test_chat_path and
test_xss (their event streams come through this front)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.sessions.models import Session
from django.test import override_settings
from django.utils import timezone

from fastgpt_portal.chat.asgi_stream import EventStreamApp
from fastgpt_portal.chat.models import Conversation, Turn
from tests.conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


class Django:
    """Stands in for Django behind the front: records that it was asked."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"django"})


def call(app, path: str, cookies: dict | None = None, method: str = "GET", headers=()) -> dict:
    """One request through the ASGI app: its status, headers and body."""
    cookie = "; ".join(f"{k}={v}" for k, v in (cookies or {}).items())
    scope = {
        "type": "http", "method": method, "path": path, "scheme": "http", "query_string": b"",
        "headers": [(b"cookie", cookie.encode()), *headers], "root_path": "",
    }  # fmt: skip
    sent: list[dict] = []

    async def receive():
        await asyncio.sleep(3600)  # the client stays

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return {
        "status": sent[0]["status"],
        "headers": {k.decode(): v.decode() for k, v in sent[0]["headers"]},
        "body": b"".join(m.get("body", b"") for m in sent[1:]).decode(),
    }


@pytest.fixture
def turn(alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Leave")
    return Turn.objects.create(
        conversation=conversation, user=alice, question="Leave policy?",
        answer="Twenty-five days.", status=Turn.Status.DONE,
    )  # fmt: skip


def url(turn) -> str:
    return f"/chat/turns/{turn.pk}/events"


def test_the_owner_is_answered_by_the_front_with_the_final_answer(turn, alice):
    django = Django()
    response = call(EventStreamApp(django), url(turn), session_cookie(alice))
    assert django.calls == 0
    assert response["status"] == 200
    assert response["headers"]["content-type"] == "text/event-stream"
    assert "event: done" in response["body"] and "Twenty-five days." in response["body"]


def test_the_front_sends_the_headers_django_would(client, turn, alice):
    client.force_login(alice)
    expected = client.get(url(turn))
    assert expected.status_code == 200 and expected.streaming
    mine = call(EventStreamApp(Django()), url(turn), session_cookie(alice))
    assert mine["status"] == 200
    assert mine["headers"] == {k.lower(): v for k, v in expected.headers.items()}

    async def body() -> bytes:
        return b"".join([chunk async for chunk in expected.streaming_content])

    assert mine["body"] == asyncio.run(body()).decode()


def test_anything_it_cannot_vouch_for_goes_to_django(turn, alice, bob, django_user_model):
    django = Django()
    app = EventStreamApp(django)
    mine = session_cookie(alice)
    key = mine[settings.SESSION_COOKIE_NAME]

    cases = {
        "no cookie": call(app, url(turn)),
        "bob's session": call(app, url(turn), session_cookie(bob)),
        "a made-up session": call(app, url(turn), {settings.SESSION_COOKIE_NAME: "x" * 32}),
        "a turn that does not exist": call(app, f"/chat/turns/{turn.pk + 1000}/events", mine),
        "a forged id": call(app, "/chat/turns/1e3/events", mine),
        "a huge id": call(app, "/chat/turns/99999999999999999999/events", mine),
        "a POST": call(app, url(turn), mine, method="POST"),
        "another path": call(app, f"/chat/turns/{turn.pk}/", mine),
    }
    with override_settings(SECURE_SSL_REDIRECT=True):
        cases["plain HTTP that must be redirected"] = call(app, url(turn), mine)

    Conversation.objects.filter(pk=turn.conversation_id).update(deleted_at=timezone.now())
    cases["a deleted conversation"] = call(app, url(turn), mine)
    Conversation.objects.filter(pk=turn.conversation_id).update(deleted_at=None)

    session = Session.objects.get(session_key=key)
    data = session.session_data
    Session.objects.filter(session_key=key).update(session_data=data[:-3] + "abc")
    cases["a tampered session"] = call(app, url(turn), mine)
    Session.objects.filter(session_key=key).update(
        session_data=data, expire_date=timezone.now() - timedelta(seconds=1)
    )
    cases["an expired session"] = call(app, url(turn), mine)
    Session.objects.filter(session_key=key).update(expire_date=session.expire_date)
    assert call(app, url(turn), mine)["status"] == 200, "the session is whole again"

    django_user_model.objects.filter(pk=alice.pk).update(is_active=False)
    cases["a deactivated user"] = call(app, url(turn), mine)
    django_user_model.objects.filter(pk=alice.pk).update(is_active=True)
    alice.set_password("a-new-password-456")
    alice.save()
    cases["a session from before a password change"] = call(app, url(turn), mine)

    assert {name: r["status"] for name, r in cases.items()} == dict.fromkeys(cases, 418)
    assert django.calls == len(cases)


# A lost database, through uvicorn and this front: the 503 page of
# tests/security/test_database_unavailable.py (its GET /chat/turns/1/events sends a session cookie).


def test_one_slow_end_of_answer_does_not_hold_another_streams_end(alice, demo_app, monkeypatch):
    """Each answer ends with its turn read and rendered in a thread; one that takes long (a slow
    query, a long answer to render) must not hold every other stream's end behind it."""
    import threading

    from fastgpt_portal.chat import streaming

    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Ends")
    slow, fast = (
        Turn.objects.create(
            conversation=conversation, user=alice, question=q, status="done", answer=q
        )
        for q in ("slow", "fast")
    )
    release = threading.Event()
    render = streaming.render_to_string

    def slow_render(template: str, context: dict) -> str:
        if context["turn"].pk == slow.pk:
            release.wait(10)
        return render(template, context)

    monkeypatch.setattr(streaming, "render_to_string", slow_render)

    async def scenario() -> str:
        slow_end = asyncio.ensure_future(streaming._final_html(slow.pk))
        try:
            await asyncio.sleep(0.1)  # the slow one is rendering
            return await asyncio.wait_for(streaming._final_html(fast.pk), 5)
        finally:
            release.set()
            await slow_end

    assert f'id="turn-{fast.pk}"' in asyncio.run(scenario())


def test_a_quiet_stream_keeps_alive_and_asks_the_database_only_now_and_then(
    alice, demo_app, monkeypatch
):
    """A turn waiting for FastGPT's first token: keep-alives at every quiet period, and a
    database check (did the turn end without its `done` entry?) only at every few of them:
    thousands of waiting answers asked it every 15 s, a tenth of the web process's CPU."""
    from asgiref.sync import sync_to_async

    from fastgpt_portal.chat import streaming

    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Quiet")
    turn = Turn.objects.create(
        conversation=conversation, user=alice, question="Slow?", status=Turn.Status.RUNNING
    )
    monkeypatch.setattr(streaming, "KEEPALIVE_MS", 20)
    asked: list[int] = []
    finished = streaming._finished

    async def counted(pk: int) -> bool:
        asked.append(pk)
        return await finished(pk)

    monkeypatch.setattr(streaming, "_finished", counted)
    every = streaming.FINISHED_CHECK_EVERY

    async def scenario() -> tuple[list[bytes], int, list[bytes]]:
        frames = streaming.answer_events(turn.pk, turn.data_id, False, "0-0")
        quiet = [await anext(frames) for _ in range(1 + 8)]  # "open", then 8 quiet periods
        checks = len(asked)
        # The turn ends, and its `done` entry never comes.
        await sync_to_async(Turn.objects.filter(pk=turn.pk).update)(status=Turn.Status.DONE)
        return quiet, checks, [frame async for frame in frames]

    quiet, checks, rest = asyncio.run(scenario())

    assert sum(b"keep-alive" in frame for frame in quiet) == 8
    assert every >= 4 and checks == 8 // every  # at most once a minute, not at every keep-alive
    assert b"event: done" in rest[-1] and len(rest) <= every
