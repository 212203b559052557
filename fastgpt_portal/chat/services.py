"""Everything that changes a Turn. Views and tasks call these; nothing else writes a status."""

from __future__ import annotations

import atexit
import logging
import queue
import random
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from fastgpt_portal.accounts.models import Identity, User
from fastgpt_portal.accounts.services import identity_for
from fastgpt_portal.chat import relay
from fastgpt_portal.chat.checkpoints import checkpoints
from fastgpt_portal.chat.models import Conversation, Turn, new_data_id
from fastgpt_portal.lib import broker, rows
from fastgpt_portal.upstream.client import client_for, usage_from
from fastgpt_portal.upstream.events import (
    AnswerDelta,
    Event,
    FlowResponses,
    Interactive,
    NodeResponse,
    NodeStatus,
    ToolEvent,
    UpstreamError,
)
from fastgpt_portal.upstream.models import App
from fastgpt_portal.usage.selectors import limits_for_user
from fastgpt_portal.usage.services import quota_check

log = logging.getLogger("fastgpt_portal.chat")

Status = Turn.Status
# Control characters other than tab and newline have no place in a question; FastGPT and the
# logs both choke on some of them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_question(text: str) -> str:
    """Normalise a question or raise ValidationError with a message for the user."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise ValidationError("Type a message first.")
    limit = settings.PORTAL_MAX_QUESTION_CHARS
    if len(text) > limit:
        raise ValidationError(
            f"The message is {len(text):,} characters long; the limit is {limit:,}."
        )
    return text


def _publish(turn_pk: int, countdown: float | None = None) -> None:
    from fastgpt_portal.chat.tasks import run_turn

    try:
        if countdown:
            run_turn.apply_async((turn_pk,), countdown=countdown)
        else:
            broker.publish(run_turn, [(turn_pk,)])
    except Exception:
        # The turn is saved as queued; the sweeper sends it once the broker is back.
        log.exception("turn %s: could not reach the broker; the sweeper will retry", turn_pk)


def _publish_many(turns: list[tuple[int, float | None]]) -> None:
    """Publish several turns' tasks in one Redis round trip each for those to run now
    (broker.publish) and those to run later (kombu's batch)."""
    if len(turns) == 1:
        _publish(*turns[0])
        return
    from fastgpt_portal.chat.tasks import run_turn

    try:
        if now := [(turn_pk,) for turn_pk, countdown in turns if not countdown]:
            broker.publish(run_turn, now)
        if later := [(turn_pk, countdown) for turn_pk, countdown in turns if countdown]:
            with run_turn.app.producer_or_acquire() as producer, producer.batch():
                for turn_pk, countdown in later:
                    run_turn.apply_async((turn_pk,), countdown=countdown, producer=producer)
    except Exception:
        log.exception(
            "turns %s: could not reach the broker; the sweeper will retry",
            ", ".join(str(turn_pk) for turn_pk, _ in turns),
        )


PUBLISH_WAIT_SECONDS = 0.05
PUBLISH_BATCH_MAX = 100


class _Dispatcher:
    """Hands queued turns to the broker from one long-lived thread per process.

    A broker that hangs holds the browser's answer for PUBLISH_WAIT_SECONDS at most, and the
    turns sent meanwhile go out together (broker.publish: one LPUSH). It began as a way round
    Celery rebuilding its per-thread state in every ASGI request thread (1.3 ms a send,
    bench/RESULTS.md); broker.publish no longer goes through that. A turn whose hand-over dies
    with the process stays queued; the sweeper sends it (PORTAL_REQUEUE_SECONDS).
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[int, float | None, threading.Event]] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def send(self, turn_pk: int, countdown: float | None = None) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="turn-dispatcher", daemon=True
                )
                self._thread.start()
            self._idle.clear()
            published = threading.Event()
            self._queue.put((turn_pk, countdown, published))
        # Wait for the publish, briefly: the worker's start is on the first token's critical
        # path, and a running request thread holds the GIL through every Redis round trip of
        # the dispatcher's (1.9 ms a publish, against 1.0 ms while this thread waits:
        # bench/RESULTS.md). A broker that does not answer costs the request at most
        # PUBLISH_WAIT_SECONDS.
        published.wait(PUBLISH_WAIT_SECONDS)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every turn handed over so far is published (tests, shutdown)."""
        return self._idle.wait(timeout)

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            # Whatever else queued up meanwhile goes out with it, in one round trip: under load
            # a publish each waited for the GIL after every Redis reply, while the event loop
            # held it, and sends queued behind the dispatcher (bench/RESULTS.md).
            while len(batch) < PUBLISH_BATCH_MAX:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            _publish_many([(turn_pk, countdown) for turn_pk, countdown, _ in batch])
            for _, _, published in batch:
                published.set()
            with self._lock:
                if self._queue.empty():
                    self._idle.set()


dispatcher = _Dispatcher()
atexit.register(dispatcher.wait, 5.0)


def _enqueue(turn_pk: int, countdown: float | None = None) -> None:
    dispatcher.send(turn_pk, countdown)


def turn_submit(
    *, user: User, text: str, app: App | None = None, conversation: Conversation | None = None
) -> Turn:
    """Save the question first, then hand it to a worker once the transaction has committed."""
    text = clean_question(text)
    if conversation is None:
        if app is None or not app.enabled:
            raise ValidationError("Choose an app to talk to.")
    else:
        app = conversation.app
        if not app.enabled:
            raise ValidationError(f"{app.name} is switched off; start a new chat with another app.")
    new = conversation is None
    if new:
        conversation = Conversation(user=user, app=app, title=_title_from(text))
    turn = Turn(conversation=conversation, user=user, question=text)
    limits = limits_for_user(user=user)
    quota_summary = None
    # A user without limits has no lock to hold: on PostgreSQL the turn and its conversation
    # are written by one statement, its own transaction (no BEGIN and COMMIT round trips).
    linked = limits.unlimited and (
        rows.insert_linked(turn, "conversation", parent=conversation)
        if new
        else rows.insert_linked(turn, "conversation", touch=conversation)
    )
    if not linked:
        with transaction.atomic():
            # Under a lock when limits apply: two tabs cannot both slip under one.
            quota_summary = quota_check(user=user, limits=limits)
            # rows.insert: the same rows as create(), without compiling an INSERT per question.
            if new:
                rows.insert(conversation)
                turn.conversation = conversation
            else:
                Conversation.objects.filter(pk=conversation.pk).update(updated=timezone.now())
            rows.insert(turn)
    # Runs once the turn is committed: at once, or when an enclosing transaction commits.
    transaction.on_commit(lambda: _enqueue(turn.pk))
    # Setting conversation_id (insert_linked) drops the cached conversation: keep the instance.
    turn.conversation = conversation
    # What is left of the user's quota with this turn counted, for the page (no recount).
    turn.quota_summary = quota_summary
    log.info("turn %s queued: user=%s app=%s", turn.pk, user.pk, app.slug)
    return turn


def _title_from(text: str) -> str:
    first_line = text.split("\n", 1)[0].strip()
    return first_line[:80] + ("…" if len(first_line) > 80 else "")


def turn_cancel(*, turn: Turn) -> Turn:
    """Stop an answer. A queued turn stops at once; a running one at the worker's next look."""
    now = timezone.now()
    if Turn.objects.filter(pk=turn.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=now, error="Stopped before an answer came."
    ):
        relay.publish_done(turn.pk, turn.data_id)
    elif turn.status == Status.RUNNING:
        relay.request_cancel(turn.pk, turn.data_id)  # the worker polls these (checkpoints)
    turn.refresh_from_db()
    return turn


def turn_retry(*, turn: Turn) -> Turn:
    """Ask the same question again, in place. Only the user's explicit Retry may re-send a
    question that FastGPT may already have run."""
    if not turn.conversation.app.enabled:
        raise ValidationError("This app is switched off.")
    with transaction.atomic():
        # A retry is not a new message of the day, but it counts against the rate, the
        # points and the answers-at-a-time cap.
        quota_check(user=turn.user, retry=True)
        # Points and tokens are kept: they add up what FastGPT charged over every try.
        updated = Turn.objects.filter(
            pk=turn.pk, status__in=[Status.FAILED, Status.CANCELLED]
        ).update(
            status=Status.QUEUED,
            answer="",
            reasoning="",
            error="",
            error_code="",
            data_id=new_data_id(),
            attempts=0,
            retries=F("retries") + 1,
            queued_at=timezone.now(),
            started_at=None,
            first_token_at=None,
            finished_at=None,
            sent_at=None,
            heartbeat_at=None,
            flow_responses=None,
            interactive=None,
        )
        if updated:
            transaction.on_commit(lambda: _enqueue(turn.pk))
            log.info("turn %s: retry requested by user %s", turn.pk, turn.user_id)
    turn.refresh_from_db()
    return turn


def conversation_delete(*, conversation: Conversation) -> None:
    """Hide it from its owner; running answers are stopped first."""
    for turn in conversation.turns.filter(status__in=[Status.QUEUED, Status.RUNNING]):
        turn_cancel(turn=turn)
    Conversation.objects.filter(pk=conversation.pk).update(deleted_at=timezone.now())


def conversation_rename(*, conversation: Conversation, title: str) -> Conversation:
    title = _CONTROL.sub("", title).strip()
    if not title:
        raise ValidationError("A title cannot be empty.")
    conversation.title = title[:200]
    conversation.save(update_fields=["title"])
    return conversation


@dataclass
class RunOutcome:
    status: str
    retry_in: float | None = None


def _fail(
    turn_pk: int,
    data_id: str,
    error: UpstreamError | str,
    *,
    answer: str | None = None,
    first_token_at: datetime | None = None,
) -> None:
    checkpoints.discard(turn_pk)
    message = error.message if isinstance(error, UpstreamError) else error
    code = str(error.code or "") if isinstance(error, UpstreamError) else ""
    fields = {
        "status": Status.FAILED,
        "error": message[:500],
        "error_code": code[:32],
        "finished_at": timezone.now(),
    }
    if answer is not None:
        fields["answer"] = answer
    if first_token_at is not None:
        fields["first_token_at"] = first_token_at
    Turn.objects.filter(pk=turn_pk, status=Status.RUNNING).update(**fields)
    relay.publish_done(turn_pk, data_id)


def _mark_app_health(app: App, error: UpstreamError | None) -> None:
    now = timezone.now()
    if error is None:
        if not app.healthy:
            App.objects.filter(pk=app.pk).update(
                healthy=True, health_message="", health_checked=now
            )
        return
    App.objects.filter(pk=app.pk).update(
        healthy=False, health_message=error.message[:500], health_checked=now
    )


@dataclass(frozen=True, slots=True)
class _Claimed:
    data_id: str
    question: str
    attempts: int
    user_id: int
    chat_id: str


_APP_FIELDS = ("id", "slug", "base_url", "api_key", "fastgpt_app_id", "healthy")
_API_KEY = _APP_FIELDS.index("api_key")


@cache
def _SQL() -> dict[str, str]:  # noqa: N802 - constants, built once the models are ready
    # A turn starts with these statements, as raw SQL (claim and load, one statement on
    # PostgreSQL): through the ORM the claim and the select_related load cost the
    # worker 7 ms of CPU (compiling, and building four models with every column), which is
    # most of the time between a task starting and the question reaching FastGPT
    # (bench/RESULTS.md). Names come from the models.
    t, c, a, i = Turn._meta, Conversation._meta, App._meta, Identity._meta
    col = t.get_field
    app_columns = ", ".join(f"a.{a.get_field(name).column}" for name in _APP_FIELDS)
    claim = (
        f"UPDATE {t.db_table} SET {col('status').column} = %s,"  # noqa: S608 - names
        f" {col('started_at').column} = %s, {col('heartbeat_at').column} = %s,"
        f" {col('sent_at').column} = %s,"
        f" {col('attempts').column} = {col('attempts').column} + 1"
        f" WHERE {t.pk.column} = %s AND {col('status').column} = %s"
    )
    load = (
        f"SELECT t.{col('data_id').column}, t.{col('question').column},"
        f" t.{col('attempts').column}, t.{col('user').column},"
        f" c.{c.get_field('chat_id').column},"
        f" i.{i.get_field('custom_uid').column}, {app_columns}"
    )
    joins = (
        f"JOIN {c.db_table} c ON c.{c.pk.column} = t.{col('conversation').column}"
        f" JOIN {a.db_table} a ON a.{a.pk.column} = c.{c.get_field('app').column}"
        f" LEFT JOIN {i.db_table} i ON i.{i.get_field('user').column} = t.{col('user').column}"
    )
    return {
        "claim": claim,
        "load": f"{load} FROM {t.db_table} t {joins} WHERE t.{t.pk.column} = %s",  # noqa: S608
        # PostgreSQL: both in one round trip (the claimed row, as updated, feeds the joins).
        "claim_and_load": f"WITH t AS ({claim} RETURNING *) {load} FROM t {joins}",  # noqa: S608
        # And ends with this one: through the ORM (F() sums, two JSON fields) it was a twelfth
        # of the worker's CPU at 1,000 streams.
        "done": (
            f"UPDATE {t.db_table} SET {col('status').column} = %s,"  # noqa: S608 - names
            f" {col('first_token_at').column} = %s, {col('answer').column} = %s,"
            f" {col('reasoning').column} = %s, {col('finished_at').column} = %s,"
            + ", ".join(
                f"{col(name).column} = {col(name).column} + %s"
                for name in ("points", "input_tokens", "output_tokens")
            )
            + f", {col('flow_responses').column} = %s, {col('interactive').column} = %s"
            f" WHERE {t.pk.column} = %s AND {col('status').column} = %s"
        ),
    }


def _db_now() -> Any:
    return connection.ops.adapt_datetimefield_value(timezone.now())


def _claim(turn_pk: int) -> tuple[_Claimed, App, str | None] | None:
    """Mark a queued turn running and sent, and read what sending it needs: the turn, its app
    and the user's customUid (None when the user has none yet). None when it is not queued.

    sent_at is set here, not in a statement of its own once the question is about to go: that
    was a second commit (a WAL flush) on the first token's path. The question goes to FastGPT
    right after, so a worker lost in between is rare, and its turn is then failed by the sweeper
    (the user presses Retry) instead of sent again: a question is never sent twice."""
    now = _db_now()
    with connection.cursor() as cursor:
        claim = [Status.RUNNING, now, now, now, turn_pk, Status.QUEUED]
        if connection.vendor == "postgresql":
            cursor.execute(_SQL()["claim_and_load"], claim)
            row = cursor.fetchone()
        else:
            cursor.execute(_SQL()["claim"], claim)
            row = None
            if cursor.rowcount == 1:
                cursor.execute(_SQL()["load"], [turn_pk])
                row = cursor.fetchone()
        if row is None:
            return None
        data_id, question, attempts, user_id, chat_id, custom_uid, *app_values = row
    key = App._meta.get_field("api_key")
    app_values[_API_KEY] = key.from_db_value(app_values[_API_KEY], None, connection)
    app = App.from_db(connection.alias, list(_APP_FIELDS), app_values)
    turn = _Claimed(data_id, question, attempts, user_id, chat_id)
    return turn, app, custom_uid


class _Answer:
    """What a turn has received of its answer. take() is the answer's sink (stream_chat_to):
    it runs on the worker's HTTP loop thread, for every turn of the process, so it does no
    database work and nothing that waits, except a turn's first token, written to Redis at once.
    """

    def __init__(self, turn_pk: int, publisher: relay.Publisher) -> None:
        self.turn_pk = turn_pk
        self.publisher = publisher
        self.answer: list[str] = []
        self.reasoning: list[str] = []
        self.flow: list[dict] = []
        self.nodes: list[dict] = []
        self.interactive: dict | None = None
        self.first_token_at: datetime | None = None
        self._checkpoint_every = settings.PORTAL_CHECKPOINT_SECONDS
        self._last_checkpoint = time.monotonic()

    def take(self, event: Event) -> bool:
        """Record and relay one event; True when the user has pressed Stop."""
        pending: list[tuple[str, str]] = []
        urgent = False  # the first token is in `pending`: written at once, whatever the window
        if isinstance(event, AnswerDelta):
            if "\x00" in event.text:
                # PostgreSQL cannot store NUL, and no answer needs one.
                event = AnswerDelta(event.text.replace("\x00", ""), event.reasoning, event.fast)
            if event.text:
                self.answer.append(event.text)
                pending.append(("delta", event.text))
            if event.reasoning:
                self.reasoning.append(event.reasoning)
                pending.append(("reasoning", event.reasoning))
            if self.first_token_at is None and (event.text or event.reasoning):
                pending.insert(0, ("status", ""))  # the answer itself now shows progress
                self.first_token_at = timezone.now()  # written with the next checkpoint
                urgent = True
        elif isinstance(event, NodeStatus):
            pending.append(("status", event.name))
        elif isinstance(event, ToolEvent) and event.kind == "toolCall":
            pending.append(("status", f"Using {event.tool.get('toolName') or 'a tool'}…"))
        elif isinstance(event, FlowResponses):
            self.flow = event.items
        elif isinstance(event, Interactive):
            self.interactive = {
                "type": event.interactive.get("type"),
                "params": event.interactive.get("params") or {},
            }
        elif isinstance(event, NodeResponse):
            self.nodes.append(event.item)
        if pending:
            self.publisher.publish(pending, urgent)
        if checkpoints.cancelled(self.turn_pk):
            return True
        if time.monotonic() - self._last_checkpoint >= self._checkpoint_every:
            self._last_checkpoint = time.monotonic()
            # The answer stream in Redis has every word; this is for when Redis is lost.
            checkpoints.note(
                self.turn_pk,
                answer="".join(self.answer),
                reasoning="".join(self.reasoning),
                first_token_at=self.first_token_at,
            )
        return False


def turn_run(*, turn_pk: int) -> RunOutcome:
    """Claim a queued turn and stream its answer from FastGPT.

    A redelivered task finds the turn no longer queued and does nothing, so no question is sent
    twice by the queue.
    """
    claimed = _claim(turn_pk)
    if claimed is None:
        return RunOutcome(status="skipped")
    turn, app, custom_uid = claimed
    if custom_uid is None:
        custom_uid = identity_for(User.objects.get(pk=turn.user_id)).custom_uid
    publisher = relay.Publisher(turn_pk, turn.data_id)
    # Heartbeats and Stop requests from here on; the task stops following it when it ends.
    checkpoints.watch(turn_pk, publisher.cancel_key)
    publisher.publish([("status", "Sending to FastGPT…")])

    received = _Answer(turn_pk, publisher)
    if not connection.in_atomic_block:
        # An answer streams for seconds or minutes: give the database connection back
        # meanwhile (checkpoints go through one writer thread), so a thousand streaming turns
        # do not hold a thousand connections.
        connection.close()
    answer, reasoning = received.answer, received.reasoning
    try:
        stopped = client_for(app).stream_chat_to(
            received.take,
            chat_id=turn.chat_id,
            custom_uid=custom_uid,
            data_id=turn.data_id,
            text=turn.question,
        )
        if stopped:  # the user pressed Stop; closing the connection stopped the workflow (v1)
            checkpoints.discard(turn_pk)
            Turn.objects.filter(pk=turn_pk, status=Status.RUNNING).update(
                first_token_at=received.first_token_at,
                status=Status.CANCELLED,
                answer="".join(answer),
                reasoning="".join(reasoning),
                error="Stopped by you.",
                finished_at=timezone.now(),
            )
            publisher.publish([("done", "")])
            publisher.flush()
            log.info("turn %s cancelled by the user", turn_pk)
            return RunOutcome(status=Status.CANCELLED)
    except UpstreamError as exc:
        text = "".join(answer)
        if exc.admin_action:
            _mark_app_health(app, exc)
        if not exc.permanent and not text and turn.attempts < settings.PORTAL_RETRY_ATTEMPTS:
            # FastGPT never ran it: put it back and try again with backoff and jitter.
            delay = exc.retry_after or settings.PORTAL_RETRY_BASE_SECONDS * 2 ** (turn.attempts - 1)
            delay = min(delay, settings.PORTAL_RETRY_MAX_SECONDS) * random.uniform(0.8, 1.2)
            checkpoints.discard(turn_pk)
            Turn.objects.filter(pk=turn_pk, status=Status.RUNNING).update(
                status=Status.QUEUED, sent_at=None
            )
            log.warning(
                "turn %s: transient upstream failure (%s, code=%s); retry %s in %.1fs",
                turn_pk, exc.message, exc.code, turn.attempts, delay,
            )  # fmt: skip
            return RunOutcome(status=Status.QUEUED, retry_in=delay)
        if not exc.permanent:
            exc.message = f"{exc.message} Tried {turn.attempts} times; press Retry to try again."
        log.error(
            "turn %s failed after %s attempt(s): app=%s code=%s: %s",
            turn_pk, turn.attempts, app.slug, exc.code, exc.message,
        )  # fmt: skip
        _fail(turn_pk, turn.data_id, exc, answer=text, first_token_at=received.first_token_at)
        return RunOutcome(status=Status.FAILED)
    except Exception:
        log.exception("turn %s: unexpected error", turn_pk)
        _fail(
            turn_pk,
            turn.data_id,
            "Something went wrong in the portal; press Retry.",
            answer="".join(answer),
            first_token_at=received.first_token_at,
        )
        return RunOutcome(status=Status.FAILED)

    flow, nodes = received.flow, received.nodes
    usage = usage_from(flow or nodes)
    text = "".join(answer)
    checkpoints.discard(turn_pk)
    _mark_app_health(app, None)
    prep = connection.ops.adapt_datetimefield_value
    fields = Turn._meta.get_field
    with connection.cursor() as cursor:
        cursor.execute(
            _SQL()["done"],
            [
                Status.DONE,
                prep(received.first_token_at),
                text,
                "".join(reasoning),
                _db_now(),
                fields("points").get_db_prep_save(usage.points, connection),
                usage.input_tokens,
                usage.output_tokens,
                fields("flow_responses").get_db_prep_save(flow or nodes or None, connection),
                fields("interactive").get_db_prep_save(received.interactive, connection),
                turn_pk,
                Status.RUNNING,
            ],
        )
    relay.publish_done(turn_pk, turn.data_id)
    log.info(
        "turn %s done: %d chars, %.4f points, %d+%d tokens",
        turn_pk, len(text), usage.points, usage.input_tokens, usage.output_tokens,
    )  # fmt: skip
    return RunOutcome(status=Status.DONE)


def _recovered_answer(turn: Turn) -> dict[str, str]:
    """The lost worker's answer as far as it got: its Redis stream has every word, the last
    checkpoint only what was there up to PORTAL_CHECKPOINT_SECONDS earlier."""
    try:
        answer, reasoning = relay.read_answer(turn.pk, turn.data_id)
    except Exception:
        log.warning("turn %s: its answer stream could not be read", turn.pk, exc_info=True)
        return {}
    if len(answer) <= len(turn.answer):
        return {}
    # A stream that outlived a checkpoint can only be longer: it holds the same words and more.
    return {"answer": answer.replace("\x00", ""), "reasoning": reasoning.replace("\x00", "")}


def sweep_turns() -> dict[str, int]:
    """Rescue turns a lost worker or a lost broker message left behind."""
    now = timezone.now()
    stale = now - timezone.timedelta(seconds=settings.PORTAL_STALE_SECONDS)
    counts = {"requeued": 0, "failed": 0, "resent": 0}
    for turn in Turn.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale).only(
        "pk", "sent_at", "answer", "reasoning", "data_id"
    ):
        if turn.sent_at is None:
            # It never reached FastGPT, so sending it again cannot answer it twice.
            if Turn.objects.filter(pk=turn.pk, status=Status.RUNNING, sent_at=None).update(
                status=Status.QUEUED
            ):
                counts["requeued"] += 1
                _enqueue(turn.pk)
        elif Turn.objects.filter(pk=turn.pk, status=Status.RUNNING, heartbeat_at__lt=stale).update(
            status=Status.FAILED,
            error="The answer was interrupted (the portal's worker stopped); press Retry.",
            finished_at=now,
            **_recovered_answer(turn),
        ):
            counts["failed"] += 1
            relay.publish_done(turn.pk, turn.data_id)
            log.error("turn %s failed by the sweeper: its worker stopped answering", turn.pk)
    requeue_before = now - timezone.timedelta(seconds=settings.PORTAL_REQUEUE_SECONDS)
    for pk in Turn.objects.filter(status=Status.QUEUED, queued_at__lt=requeue_before).values_list(
        "pk", flat=True
    ):
        counts["resent"] += 1
        _enqueue(pk)
    if any(counts.values()):
        log.warning("sweeper: %s", counts)
    return counts
