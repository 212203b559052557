"""Turns survive faults: each case injects a real fault (through the FastGPT double, a killed
worker process or a restarted Redis) against a real worker and a real Redis."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.utils import timezone

from fastgpt_portal.chat import relay, services
from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib import broker
from fastgpt_portal.lib.embedded_redis import EmbeddedRedis, free_port
from fastgpt_portal.upstream.double import DOUBLE_APP_KEY
from fastgpt_portal.upstream.models import App
from tests.conftest import (
    ROOT,
    _child_env,
    completions,
    finished,
    start_worker_process,
    stop_process,
    wait_until,
)

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]


def submit(user, app, text="Where is the office?") -> Turn:
    return services.turn_submit(user=user, text=text, app=app)


@pytest.mark.parametrize("fault", ["proxy_502", "proxy_503", "proxy_504"])
def test_it_retries_a_proxy_error_then_answers(alice, demo_app, fastgpt, worker, fault):
    fastgpt.inject(fault, count=2)
    turn = submit(alice, demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "done", turn.error
    assert turn.attempts == 3
    assert len(completions(fastgpt)) == 3


def test_it_retries_a_rate_limit_after_the_time_fastgpt_asks(alice, demo_app, fastgpt, worker):
    fastgpt.inject("rate_429", count=1, seconds=0.3)
    turn = submit(alice, demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "done", turn.error
    times = [r["time"] for r in completions(fastgpt)]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.2, "it waited before asking again"


def test_it_gives_up_after_bounded_retries_with_a_readable_reason(alice, demo_app, fastgpt, worker):
    from django.conf import settings

    fastgpt.inject("proxy_503", count=50)
    turn = submit(alice, demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "failed"
    assert len(completions(fastgpt)) == settings.PORTAL_RETRY_ATTEMPTS
    assert "503" in turn.error and "Tried 4 times" in turn.error
    assert turn.answer == ""


def test_it_retries_a_connect_error_then_fails_readably(alice, worker):
    app = App.objects.create(
        name="Down", base_url=f"http://127.0.0.1:{free_port()}", api_key=DOUBLE_APP_KEY
    )
    turn = submit(alice, app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "failed"
    assert turn.attempts == 4
    assert "could not be reached" in turn.error


def test_a_dropped_connection_keeps_the_partial_answer_and_retry_asks_again(
    alice, demo_app, fastgpt, worker
):
    fastgpt.inject("drop_mid_stream", after_tokens=3)
    turn = submit(alice, demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "failed"
    assert turn.answer, "the partial answer is kept"
    assert "lost" in turn.error
    assert len(completions(fastgpt)) == 1, "a question FastGPT may have run is not re-sent"
    first_data_id = turn.data_id

    turn = services.turn_retry(turn=turn)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "done"
    assert turn.retries == 1
    bodies = [r["json"] for r in completions(fastgpt)]
    assert len(bodies) == 2
    assert bodies[1]["chatId"] == bodies[0]["chatId"]
    assert bodies[1]["responseChatItemId"] != first_data_id


@pytest.mark.parametrize(
    ("fault", "words"),
    [("key_rejected", "app key"), ("points", "points")],
)
def test_an_admin_problem_fails_the_turn_and_marks_the_app_unhealthy(
    client, alice, demo_app, fastgpt, worker, fault, words
):
    fastgpt.inject(fault)
    turn = submit(alice, demo_app)
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "failed"
    assert words in turn.error and "administrator" in turn.error
    assert len(completions(fastgpt)) == 1, "not retried: retrying cannot help"
    demo_app.refresh_from_db()
    assert not demo_app.healthy and demo_app.health_message
    client.force_login(alice)
    page = client.get(f"/c/{turn.conversation_id}/").text
    assert "is not working right now" in page

    # The next good answer marks it healthy again.
    turn = submit(alice, demo_app)
    wait_until(lambda: finished(turn.pk))
    demo_app.refresh_from_db()
    assert demo_app.healthy


def start_worker(queue: str, log_path, **env: str) -> subprocess.Popen:
    return start_worker_process(log_path, env=_child_env(**env), queue=queue, concurrency=4)


def queued_turn(user, app, text="Tell me a long story") -> Turn:
    conversation = Conversation.objects.create(user=user, app=app, title=text)
    return Turn.objects.create(conversation=conversation, user=user, question=text)


def test_a_killed_worker_fails_the_turn_once_and_never_answers_twice(
    alice, demo_app, fastgpt, settings, tmp_path
):
    from fastgpt_portal.celery import app as celery_app
    from fastgpt_portal.chat.tasks import run_turn

    fastgpt.token_rate = 20
    fastgpt.tokens = 200
    queue = f"kill-{uuid.uuid4().hex[:6]}"
    proc = start_worker(queue, tmp_path / "killed.log")
    try:
        turn = queued_turn(alice, demo_app)
        with celery_app.connection_for_write() as conn:
            run_turn.apply_async((turn.pk,), queue=queue, connection=conn)
        # Wait until part of the answer has been checkpointed, then kill the worker hard.
        wait_until(lambda: Turn.objects.get(pk=turn.pk).answer, timeout=20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop_process(proc)
        fastgpt.token_rate = 0
        fastgpt.tokens = None

    partial = Turn.objects.get(pk=turn.pk)
    assert partial.status == "running"
    settings.PORTAL_STALE_SECONDS = 1
    time.sleep(1.5)
    counts = services.sweep_turns()
    assert counts["failed"] == 1
    turn.refresh_from_db()
    assert turn.status == "failed"
    assert "interrupted" in turn.error
    # Every word that reached Redis is kept: at least the last checkpoint, usually more.
    streamed, _ = relay.read_answer(turn.pk, turn.data_id)
    assert turn.answer == streamed and streamed.startswith(partial.answer)
    # A redelivered task finds the turn no longer queued: FastGPT is not asked twice.
    assert services.turn_run(turn_pk=turn.pk).status == "skipped"
    assert len(completions(fastgpt)) == 1


@pytest.mark.parametrize(
    ("stream", "kept"),
    [
        ([("delta", "Hello, "), ("status", "Searching"), ("delta", "world and more")],
         "Hello, world and more"),
        ([], "Hello, wor"),  # the stream expired or Redis lost it: the checkpoint stays
    ],
)  # fmt: skip
def test_the_sweeper_keeps_the_longest_answer_it_can_find(alice, demo_app, settings, stream, kept):
    turn = queued_turn(alice, demo_app)
    stale = timezone.now() - timezone.timedelta(seconds=600)
    Turn.objects.filter(pk=turn.pk).update(
        status="running", sent_at=stale, heartbeat_at=stale, answer="Hello, wor"
    )
    publisher = relay.Publisher(turn.pk, turn.data_id)
    publisher.publish(stream)
    publisher.flush()
    assert services.sweep_turns()["failed"] == 1
    turn.refresh_from_db()
    assert (turn.status, turn.answer) == ("failed", kept)


def test_the_sweeper_resends_a_turn_that_never_reached_fastgpt(
    alice, demo_app, fastgpt, worker, settings
):
    # A worker that died between claiming the turn and sending it leaves it running, unsent.
    turn = queued_turn(alice, demo_app)
    Turn.objects.filter(pk=turn.pk).update(
        status="running", sent_at=None, heartbeat_at="2020-01-01T00:00Z"
    )
    settings.PORTAL_STALE_SECONDS = 1
    assert services.sweep_turns()["requeued"] == 1
    turn = wait_until(lambda: finished(turn.pk))
    assert turn.status == "done"
    assert len(completions(fastgpt)) == 1


def test_turns_queued_when_redis_restarts_are_sent_once_it_is_back(
    alice, demo_app, fastgpt, tmp_path
):
    from kombu import Connection

    from fastgpt_portal.chat.tasks import run_turn

    port = free_port()
    redis = EmbeddedRedis(port=port).start()
    queue = f"restart-{uuid.uuid4().hex[:6]}"
    turns = [queued_turn(alice, demo_app, f"Question {i}") for i in range(3)]
    with Connection(redis.url) as conn:
        for turn in turns:
            run_turn.apply_async((turn.pk,), queue=queue, connection=conn)
    # Redis restarts before any worker took the messages: they are gone (no persistence).
    redis.stop()
    redis = EmbeddedRedis(port=port).start()
    env = {
        "REDIS_URL": redis.url,
        "PORTAL_QUEUE": queue,
        "PORTAL_REQUEUE_SECONDS": "0",
    }
    proc = start_worker(queue, tmp_path / "restart.log", **env)
    try:
        time.sleep(2)
        assert all(Turn.objects.get(pk=t.pk).status == "queued" for t in turns)
        # Celery beat sends the sweeper to the worker, exactly as in production.
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "fastgpt_portal", "call", "chat.sweep_turns",
             "--queue", queue],
            cwd=ROOT, env=_child_env(**env), check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        for turn in turns:
            assert wait_until(lambda t=turn: finished(t.pk), timeout=30).status == "done"
    finally:
        stop_process(proc)
        redis.stop()
    assert len(completions(fastgpt)) == 3, "each sent exactly once"


def test_a_hanging_broker_does_not_hold_the_send_and_the_sweeper_sends_later(
    client, alice, demo_app, settings, monkeypatch, caplog, django_capture_on_commit_callbacks
):
    import threading

    from fastgpt_portal.chat.tasks import run_turn

    release, gave_up = threading.Event(), threading.Event()
    calls: list[int] = []

    def hanging_publish(task, args: list[tuple[int]]) -> None:  # Redis accepts, never answers
        assert task is run_turn
        calls.extend(pk for (pk,) in args)
        release.wait(10)
        gave_up.set()
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(broker, "publish", hanging_publish)
    client.force_login(alice)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/chat/send", {"text": "hello", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
        )
    # The browser has its answer while the hand-over to the broker still hangs.
    assert response.status_code == 200 and not gave_up.is_set()
    turn = Turn.objects.get()
    assert wait_until(lambda: calls) == [turn.pk] and turn.status == "queued"
    release.set()
    assert services.dispatcher.wait(5)
    assert f"turn {turn.pk}: could not reach the broker" in caplog.text

    # Once the broker is back, the sweeper sends it.
    sent: list[int] = []
    monkeypatch.setattr(broker, "publish", lambda task, args: sent.extend(pk for (pk,) in args))
    settings.PORTAL_REQUEUE_SECONDS = 0
    Turn.objects.filter(pk=turn.pk).update(queued_at=timezone.now() - timezone.timedelta(1))
    assert services.sweep_turns()["resent"] == 1
    assert services.dispatcher.wait(5) and sent == [turn.pk]


def test_running_turns_are_marked_alive_while_their_worker_follows_them(alice, demo_app):
    from fastgpt_portal.chat.checkpoints import checkpoints

    followed, abandoned = queued_turn(alice, demo_app), queued_turn(alice, demo_app)
    old = timezone.now() - timezone.timedelta(seconds=600)
    Turn.objects.filter(pk__in=[followed.pk, abandoned.pk]).update(
        status="running", heartbeat_at=old
    )
    checkpoints.watch(followed.pk, relay.cancel_key(followed.pk, followed.data_id))
    try:
        checkpoints.beat()
    finally:
        checkpoints.discard(followed.pk)
    followed.refresh_from_db()
    abandoned.refresh_from_db()
    assert followed.heartbeat_at > old and abandoned.heartbeat_at == old
