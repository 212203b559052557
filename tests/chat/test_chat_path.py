"""The whole chat path: view -> database -> Celery worker -> FastGPT double over HTTP ->
Redis stream -> ASGI SSE view. Real worker, real Redis, real HTTP; nothing of ours patched."""

from __future__ import annotations

import pytest

from fastgpt_portal.accounts.services import identity_for
from fastgpt_portal.chat.models import Conversation, Turn
from tests.conftest import completions, finished, read_events, session_cookie, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def send(client, text: str, **extra) -> Turn:
    response = client.post("/chat/send", {"text": text, **extra}, HTTP_HX_REQUEST="true")
    assert response.status_code == 200, response.content
    return Turn.objects.latest("pk")


def test_it_sends_the_question_as_the_user_with_the_app_key(
    client, alice, demo_app, fastgpt, worker
):
    client.force_login(alice)
    turn = send(client, "What is our leave policy?", app=demo_app.slug)
    turn = wait_until(lambda: finished(turn.pk), message="the turn did not finish")

    assert turn.status == Turn.Status.DONE, turn.error
    [request] = completions(fastgpt)
    assert request["headers"]["authorization"] == f"Bearer {demo_app.api_key}"
    body = request["json"]
    assert body["customUid"] == identity_for(alice).custom_uid == "alice"
    assert body["chatId"] == turn.conversation.chat_id
    assert body["responseChatItemId"] == turn.data_id
    assert body["stream"] is True and body["detail"] is True
    assert body["messages"] == [{"role": "user", "content": "What is our leave policy?"}]
    assert turn.answer, "the answer was stored"
    assert turn.first_token_at and turn.finished_at and turn.started_at


def test_it_reuses_the_chat_id_and_sends_only_the_new_message(
    client, alice, demo_app, fastgpt, worker
):
    client.force_login(alice)
    first = send(client, "First question", app=demo_app.slug)
    wait_until(lambda: finished(first.pk))
    second = send(client, "Second question", conversation=first.conversation_id)
    wait_until(lambda: finished(second.pk))

    bodies = [r["json"] for r in completions(fastgpt)]
    assert len(bodies) == 2
    assert bodies[0]["chatId"] == bodies[1]["chatId"] == first.conversation.chat_id
    assert bodies[1]["messages"] == [{"role": "user", "content": "Second question"}]
    assert bodies[0]["responseChatItemId"] != bodies[1]["responseChatItemId"]
    assert Conversation.objects.count() == 1


def test_it_stores_usage_from_the_top_level_flow_responses(
    client, alice, demo_app, fastgpt, worker
):
    client.force_login(alice)
    turn = send(client, "How much does this cost?", app=demo_app.slug)
    turn = wait_until(lambda: finished(turn.pk))

    flow = turn.flow_responses
    assert flow, "the raw flowResponses were kept"
    assert turn.points == pytest.approx(sum(item.get("totalPoints", 0) for item in flow))
    assert turn.points > 0
    assert turn.input_tokens == sum(item.get("inputTokens", 0) for item in flow)
    assert turn.output_tokens == sum(item.get("outputTokens", 0) for item in flow)


@pytest.mark.django_db
def test_the_question_is_stored_before_it_is_queued(
    client, alice, demo_app, fastgpt, django_capture_on_commit_callbacks
):
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        turn = send(client, "Saved first?", app=demo_app.slug)
    # The task is queued only once the transaction that saved the question has committed.
    assert turn.status == Turn.Status.QUEUED
    assert turn.question == "Saved first?"
    assert len(callbacks) == 1
    assert completions(fastgpt) == []


def test_the_answer_streams_to_the_browser_over_sse(
    alice, demo_app, fastgpt, worker, portal_server
):
    import html

    from fastgpt_portal.chat.services import turn_submit

    fastgpt.token_rate = 50  # paced, so the stream is read while it is being written
    fastgpt.tokens = 30
    turn = turn_submit(user=alice, text="Stream it", app=demo_app)
    cookies = session_cookie(alice)
    events = read_events(f"{portal_server.url}/chat/turns/{turn.pk}/events", cookies)
    fastgpt.token_rate = 0
    fastgpt.tokens = None

    deltas = [e for e in events if e.get("event") == "delta"]
    assert len(deltas) > 1, "the answer arrived in pieces as it was generated"
    assert events[-1]["event"] == "done"
    turn.refresh_from_db()
    assert turn.status == Turn.Status.DONE
    assert html.unescape("".join(e["data"] for e in deltas)) == turn.answer
    assert f'id="turn-{turn.pk}"' in events[-1]["data"]


def test_a_reconnecting_browser_resumes_after_the_last_event(
    alice, demo_app, fastgpt, worker, portal_server
):
    import html

    from fastgpt_portal.chat.services import turn_submit

    fastgpt.token_rate = 40
    fastgpt.tokens = 40
    turn = turn_submit(user=alice, text="Resume it", app=demo_app)
    url = f"{portal_server.url}/chat/turns/{turn.pk}/events"
    cookies = session_cookie(alice)
    first = read_events(url, cookies, limit=4)
    last_id = [e for e in first if e.get("id")][-1]["id"]
    rest = read_events(url, cookies, headers={"Last-Event-ID": last_id})
    fastgpt.token_rate = 0
    fastgpt.tokens = None

    turn.refresh_from_db()
    text = "".join(e["data"] for e in first + rest if e.get("event") == "delta")
    assert html.unescape(text) == turn.answer, "nothing lost, nothing repeated"


def test_a_finished_turn_is_served_from_the_database(
    alice, demo_app, fastgpt, worker, portal_server
):
    from fastgpt_portal.chat.services import turn_submit

    turn = turn_submit(user=alice, text="Done already?", app=demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    events = read_events(f"{portal_server.url}/chat/turns/{turn.pk}/events", session_cookie(alice))
    assert [e["event"] for e in events] == ["done"]
    assert "Done already?" in events[0]["data"]


def test_a_reload_shows_the_stored_answer(client, alice, demo_app, fastgpt, worker):
    client.force_login(alice)
    turn = send(client, "Remember me", app=demo_app.slug)
    turn = wait_until(lambda: finished(turn.pk))
    page = client.get(f"/c/{turn.conversation_id}/")
    assert page.status_code == 200
    assert "Remember me" in page.text
    assert "sse-connect" not in page.text, "a finished turn is plain HTML"


def test_stop_cancels_a_running_answer_and_keeps_what_came(
    client, alice, demo_app, fastgpt, worker
):
    fastgpt.token_rate = 20
    fastgpt.tokens = 200
    try:
        client.force_login(alice)
        turn = send(client, "A long answer please", app=demo_app.slug)
        wait_until(lambda: Turn.objects.get(pk=turn.pk).answer, message="nothing streamed")
        response = client.post(f"/chat/turns/{turn.pk}/cancel", HTTP_HX_REQUEST="true")
        assert response.status_code == 200
        turn = wait_until(lambda: finished(turn.pk), timeout=10)
    finally:
        fastgpt.token_rate = 0
        fastgpt.tokens = None
    assert turn.status == Turn.Status.CANCELLED
    assert turn.answer, "the part that came is kept"
    assert len(turn.answer.split()) < 150, "it stopped well before the end"
    assert turn.error == "Stopped by you."


def test_stop_cancels_a_queued_turn_at_once(client, alice, demo_app, fastgpt):
    from fastgpt_portal.chat.services import turn_cancel

    # No worker is running for this test's turn: it stays queued until cancelled.
    conversation = Conversation.objects.create(user=alice, app=demo_app)
    turn = Turn.objects.create(conversation=conversation, user=alice, question="q")
    turn = turn_cancel(turn=turn)
    assert turn.status == Turn.Status.CANCELLED
    assert completions(fastgpt) == []


def test_a_user_select_node_offers_its_options_and_the_choice_continues_the_chat(
    client, alice, demo_app, fastgpt, worker
):
    client.force_login(alice)
    turn = send(client, "Pick one [[select]]", app=demo_app.slug)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == Turn.Status.DONE
    assert turn.select_options == ["The short one", "The long one"]
    page = client.get(f"/c/{turn.conversation_id}/").text
    assert ">The short one</button>" in page

    choice = send(client, "The short one", conversation=turn.conversation_id)
    choice = wait_until(lambda: finished(choice.pk))
    assert choice.status == Turn.Status.DONE
    assert "The short one" in choice.answer
    bodies = [r["json"] for r in completions(fastgpt)]
    assert bodies[1]["chatId"] == bodies[0]["chatId"]
    assert bodies[1]["messages"] == [{"role": "user", "content": "The short one"}]
    page = client.get(f"/c/{turn.conversation_id}/").text
    assert ">The short one</button>" not in page, "an answered question offers no options"


@pytest.mark.parametrize(
    ("content", "kept"),
    [
        # PostgreSQL text cannot hold NUL.
        ('"a\\u0000b"', "ab"),
        # A UTF-16 half without its pair: UTF-8 cannot carry it. The relay's write failed for
        # every answer written with it, and PostgreSQL refused even the failed turn's partial
        # answer, so the turn stayed running.
        ('"a lone \\ud800 half"', "a lone \ufffd half"),
    ],
    ids=["nul", "lone-utf16-half"],
)
def test_a_character_storage_cannot_hold_is_dropped_or_replaced_not_fatal(
    alice, demo_app, fastgpt, worker, content, kept
):
    from fastgpt_portal.chat import relay
    from fastgpt_portal.chat.services import turn_submit

    chunk = (
        'event: answer\ndata: {"id":"","object":"","created":0,"model":"","choices":[{"delta":'
        '{"role":"assistant","content":%s},"index":0,"finish_reason":%s}]}\n\n'
    )
    frames = (
        chunk % (content, "null") + chunk % ("null", '"stop"') + "event: answer\ndata: [DONE]\n\n"
    )
    fastgpt.inject("raw", bytes=frames, headers={"content-type": "text/event-stream"})
    turn = turn_submit(user=alice, text="Say something odd", app=demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == Turn.Status.DONE, turn.error
    assert turn.answer == kept
    assert relay.read_answer(turn.pk, turn.data_id)[0] == kept
