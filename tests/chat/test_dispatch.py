"""How a saved question reaches a worker: the hand-over to the broker, the broker's transport and
the worker's claim."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from fastgpt_portal.chat import services
from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib import broker

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_send_returns_once_its_question_is_with_the_broker(monkeypatch):
    # The worker's start is on the first token's path: the request thread waits for the
    # publish instead of holding the GIL through the dispatcher's Redis round trips.
    published: list[int] = []

    def publish(pk: int, countdown: float | None = None) -> None:
        time.sleep(0.005)
        published.append(pk)

    monkeypatch.setattr(services, "_publish", publish)
    services.dispatcher.send(7)
    assert published == [7]


def test_a_broker_that_does_not_answer_holds_a_send_only_briefly(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(services, "_publish", lambda pk, countdown=None: release.wait(10))
    started = time.monotonic()
    services.dispatcher.send(1)
    waited = time.monotonic() - started
    release.set()
    assert services.dispatcher.wait(5)
    assert services.PUBLISH_WAIT_SECONDS <= waited < 1


def test_the_claim_marks_the_turn_running_and_reads_what_sending_needs(alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="t")
    turn = Turn.objects.create(conversation=conversation, user=alice, question="Where?")
    with CaptureQueriesContext(connection) as queries:
        claimed = services._claim(turn.pk)
    # One round trip on PostgreSQL (the claim feeds the load); two elsewhere.
    assert len(queries) == (1 if connection.vendor == "postgresql" else 2)
    assert claimed is not None
    claimed_turn, app, custom_uid = claimed
    assert (claimed_turn.data_id, claimed_turn.question, claimed_turn.attempts) == (
        turn.data_id,
        "Where?",
        1,
    )
    assert claimed_turn.chat_id == conversation.chat_id and claimed_turn.user_id == alice.pk
    assert (app.pk, app.api_key) == (demo_app.pk, demo_app.api_key)
    assert custom_uid is None  # alice has not asked anything before
    turn.refresh_from_db()
    assert (turn.status, turn.attempts) == ("running", 1) and turn.started_at
    # A second delivery of the same task finds nothing to claim.
    assert services._claim(turn.pk) is None


def test_the_broker_channel_keeps_one_client_for_its_pool():
    from fastgpt_portal.celery import app

    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, broker.Channel)
        client = channel._create_client()
        assert channel._create_client() is client
        assert client.ping()
        # A channel that rebuilds its pool (after a lost connection) gets a client on it.
        channel._pool = None
        assert channel._create_client() is not client
        assert channel._create_client().connection_pool is channel.pool


def test_a_question_is_stored_in_one_statement_on_postgresql(alice, demo_app):
    """An unlimited user's send: the limits, then the conversation and the turn together; a
    user with limits keeps the locked transaction (tests/usage)."""
    with CaptureQueriesContext(connection) as queries:
        turn = services.turn_submit(user=alice, text="First", app=demo_app)
        follow_up = services.turn_submit(user=alice, text="Second", conversation=turn.conversation)
    writes = [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("SELECT")]
    if connection.vendor == "postgresql":
        assert len(writes) == 2 and all(sql.startswith("WITH head AS") for sql in writes), writes
        assert len(queries) == 4, "each send: its limits and one write"
    stored = Turn.objects.filter(conversation=turn.conversation).order_by("pk")
    assert [t.question for t in stored] == ["First", "Second"]
    assert follow_up.conversation.pk == turn.conversation.pk
