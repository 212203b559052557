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
from tests.conftest import completions, wait_until

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
    # Marked sent by the same statement (no second commit before the question goes): a worker
    # lost from here on leaves a turn the sweeper fails, never one it sends again.
    assert turn.sent_at == turn.started_at
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


def test_a_question_is_stored_in_one_statement_on_postgresql(alice, demo_app, monkeypatch):
    """An unlimited user's send: the limits, then the conversation and the turn together; a
    user with limits keeps the locked transaction (tests/usage)."""
    # Not handed to the broker: the session's worker, if one is up, would run these turns
    # while the test database is emptied (a deadlock against the TRUNCATE, seen in CI).
    monkeypatch.setattr(services, "_enqueue", lambda turn_pk, countdown=None: None)
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


@pytest.mark.worker
def test_sends_that_queue_up_are_published_together_and_each_runs(
    alice, demo_app, fastgpt, worker, monkeypatch
):
    """While the dispatcher publishes one turn, the turns sent meanwhile go out in one batch
    (one Redis round trip), and the real worker runs every one of them once."""
    batches: list[list[int]] = []
    publish_many, publish_one = services._publish_many, services._publish
    first_publish, burst_queued = threading.Event(), threading.Event()

    def slow_first(turn_pk: int, countdown: float | None = None) -> None:
        first_publish.set()
        burst_queued.wait(5)  # the broker is slow to answer this one
        publish_one(turn_pk, countdown)

    def spy(turns: list[tuple[int, float | None]]) -> None:
        batches.append([turn_pk for turn_pk, _ in turns])
        publish_many(turns)

    monkeypatch.setattr(services, "_publish", slow_first)
    monkeypatch.setattr(services, "_publish_many", spy)
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Burst")
    turns = [
        Turn.objects.create(conversation=conversation, user=alice, question=f"q{i}")
        for i in range(6)
    ]
    senders = [threading.Thread(target=services.dispatcher.send, args=(turns[0].pk,))]
    senders[0].start()
    assert first_publish.wait(5)
    senders += [threading.Thread(target=services.dispatcher.send, args=(t.pk,)) for t in turns[1:]]
    for sender in senders[1:]:
        sender.start()
    wait_until(lambda: services.dispatcher._queue.qsize() == 5, message="the burst queued")
    burst_queued.set()
    for sender in senders:
        sender.join(5)
    assert services.dispatcher.wait(5)

    assert batches == [[turns[0].pk], [t.pk for t in turns[1:]]]
    wait_until(
        lambda: not Turn.objects.filter(pk__in=[t.pk for t in turns], status="queued").exists(),
        message="the worker did not run every turn",
    )
    for turn in turns:
        wait_until(lambda pk=turn.pk: Turn.objects.get(pk=pk).is_finished)
    assert {t.status for t in Turn.objects.filter(pk__in=[t.pk for t in turns])} == {"done"}
    assert len(completions(fastgpt)) == 6, "each question reached FastGPT once"


def test_turns_are_published_as_the_messages_celery_writes(monkeypatch):
    """broker.publish sends a process's first task through Celery and copies its message for
    the next ones: each copy must be what apply_async() would have written, but for its ids
    and arguments."""
    import base64
    import dataclasses
    import json

    from django.conf import settings
    from kombu.transport import redis as kombu_redis

    from fastgpt_portal.chat.tasks import run_turn

    written: list[tuple[str, dict]] = []  # (Redis list, message), in the order workers take them
    monkeypatch.setattr(
        kombu_redis.Channel,
        "_put",
        lambda self, queue, message, **kw: written.append((queue, message)),
    )
    monkeypatch.setattr(broker, "_templates", {})

    class Client:
        def lpush(self, key: str, *messages: bytes) -> None:
            written.extend((key, json.loads(m)) for m in messages)

    broker.publish(run_turn, [(11,)])  # learned: sent the Celery way
    pid, template = broker._templates[run_turn.name]
    broker._templates[run_turn.name] = (pid, dataclasses.replace(template, client=Client()))
    broker.publish(run_turn, [(12,), (13,)])
    run_turn.apply_async((14,))  # Celery's own, for comparison

    def ids_and_args(message: dict) -> tuple[str, str, tuple]:
        headers, properties = message["headers"], message["properties"]
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        assert headers["root_id"] == properties["correlation_id"] == headers["id"]
        assert kwargs == {} and headers["argsrepr"] == repr(tuple(args))
        return headers["id"], properties["delivery_tag"], tuple(args)

    def without_ids_and_args(message: dict) -> dict:
        message = json.loads(json.dumps(message))
        for field in ("id", "root_id", "argsrepr"):
            message["headers"].pop(field)
        for field in ("correlation_id", "delivery_tag"):
            message["properties"].pop(field)
        message["body"] = json.loads(base64.b64decode(message["body"]))[1:]
        return message

    queues = {queue for queue, _ in written}
    assert queues == {settings.CELERY_TASK_DEFAULT_QUEUE}
    found = [ids_and_args(message) for _, message in written]
    assert [args for _, _, args in found] == [(11,), (12,), (13,), (14,)]
    assert len({task_id for task_id, *_ in found}) == 4
    assert len({tag for _, tag, *_ in found}) == 4
    celery = without_ids_and_args(written[3][1])
    assert all(without_ids_and_args(message) == celery for _, message in written[:3])
