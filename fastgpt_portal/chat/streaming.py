"""The async SSE view: a turn's answer from its Redis stream to the browser."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string
from django.utils.html import escape

from fastgpt_portal.chat import relay, selectors
from fastgpt_portal.chat.models import Turn
from fastgpt_portal.lib import sse
from fastgpt_portal.lib.rows import RowLoader

# A Redis stream id: two integers; at most 19 digits each keeps them within its 64-bit range.
_STREAM_ID = re.compile(r"(?:0|[1-9]\d{0,18})-(?:0|[1-9]\d{0,18})")

log = logging.getLogger("fastgpt_portal.chat")


def release_connection() -> None:
    # Django closes a request's database connection when its response ends, and an answer
    # stream lasts seconds to minutes: give it back (to the pool) while waiting, or a thousand
    # open streams hold a thousand connections (PostgreSQL's default limit is 100). Inside a
    # transaction (Django's test client runs views in one) there is nothing to give back.
    if not connection.in_atomic_block:
        connection.close()


@sync_to_async
def _authorise(request: HttpRequest, pk: int) -> tuple[bool, Turn | None]:
    """Whether the request is logged in, and its user's turn: the session, the user and the
    turn in one hop to a thread (each hop costs the event loop a GIL handoff)."""
    try:
        if not request.user.is_authenticated:
            return False, None
        return True, selectors.turn_get_for_user_or_none(user=request.user, pk=pk)
    finally:
        release_connection()


# Not thread-sensitive, as asgi_stream._owned_turn: outside Django's request cycle asgiref runs
# every thread-sensitive call of the process in one thread, so one slow read or render would
# hold the end of every other answer behind it (tests/chat/test_asgi_stream.py).
@sync_to_async(thread_sensitive=False)
def _finished(pk: int) -> bool:
    try:
        return Turn.objects.filter(pk=pk, status__in=Turn.FINISHED).exists()
    finally:
        release_connection()


# Every answer ends with this read, in the web process: one statement written once, without
# the workflow's node responses (JSON the page does not show).
_final_turns = RowLoader(Turn, defer=("flow_responses",))


@sync_to_async(thread_sensitive=False)
def _final_html(pk: int) -> str:
    try:
        turn = _final_turns.get(pk)
        if turn is None:
            raise Turn.DoesNotExist(f"turn {pk} is gone")
        return render_to_string("chat/chat.html#turn", {"turn": turn})
    finally:
        release_connection()


KEEPALIVE_MS = 15_000
# A quiet stream asks the database whether its turn ended unseen (its `done` entry lost, or its
# stream expired) at every this many keep-alives: once a minute. At every one, 1,600 answers
# waiting for FastGPT's first token cost the web process 10% of a core and PostgreSQL 2.7%;
# now 2.6% and 0.8% (`python -m bench.idle`, bench/RESULTS.md).
FINISHED_CHECK_EVERY = 4
# Set by the view and by asgi_stream alike: no proxy may buffer or transform the stream.
STREAM_HEADERS = (("Cache-Control", "no-cache, no-transform"), ("X-Accel-Buffering", "no"))


def clean_last_id(value: str | None) -> str:
    """The Last-Event-ID to resume after: one of our stream ids or "done", else the start."""
    last_id = value or "0-0"
    if last_id != "done" and not _STREAM_ID.fullmatch(last_id):
        # The browser echoes our ids; anything else is forged, and one invalid id in the shared
        # XREAD would stall every answer stream in this process (tests/test_bad_input.py).
        return "0-0"
    return last_id


async def answer_events(
    pk: int, data_id: str, finished: bool, last_id: str
) -> AsyncIterator[bytes]:
    """A turn's answer as SSE frames: what its Redis stream holds after `last_id`, then what
    arrives, then the final turn HTML as the `done` event."""

    async def finished_frame() -> bytes:
        return sse.frame(await _final_html(pk), event="done", id="done")

    if finished or last_id == "done":
        yield await finished_frame()
        return
    # One blocking XREAD per web process serves every open stream (relay.StreamHub): a
    # connection each would need a Redis connection and a round trip per event per browser.
    subscription = await relay.stream_hub().subscribe(relay.stream_key(pk, data_id), last_id)
    try:
        yield sse.frame("", event="open", retry=2000)
        quiet = 0
        while True:
            entries = await subscription.get(KEEPALIVE_MS / 1000)
            if not entries:
                # Quiet for a while: keep proxies from closing the connection and, now and then,
                # make sure the turn has not finished without us noticing.
                quiet += 1
                if quiet % FINISHED_CHECK_EVERY == 0 and await _finished(pk):
                    yield await finished_frame()
                    return
                yield sse.comment("keep-alive")
                continue
            quiet = 0
            chunks: list[bytes] = []
            deltas: list[str] = []
            cursor = last_id
            for entry_id, fields in entries:
                cursor = entry_id
                event = fields.get("e")
                if event == "delta":
                    deltas.append(fields.get("d", ""))
                    continue
                if deltas:
                    chunks.append(sse.frame(escape("".join(deltas)), event="delta", id=entry_id))
                    deltas = []
                if event == "done":
                    if chunks:
                        yield b"".join(chunks)
                    yield await finished_frame()
                    return
                chunks.append(sse.frame(escape(fields.get("d", "")), event=event, id=entry_id))
            if deltas:
                chunks.append(sse.frame(escape("".join(deltas)), event="delta", id=cursor))
            yield b"".join(chunks)
    finally:
        subscription.close()


async def turn_events(request: HttpRequest, pk: int) -> HttpResponse:
    """The answer as server-sent events, from the Redis stream; resumes after Last-Event-ID.

    Under ASGI a logged-in user's own turn is answered by EventStreamApp before Django's
    request cycle; this view answers everything else (401, 404, other session engines) and
    every request that does not come through asgi.py.
    """
    authenticated, turn = await _authorise(request, pk)
    if not authenticated:
        return HttpResponse("Log in first.", status=401)
    if turn is None:
        raise Http404("No such turn.")
    last_id = clean_last_id(request.headers.get("Last-Event-ID"))
    response = StreamingHttpResponse(
        answer_events(pk, turn.data_id, turn.is_finished, last_id),
        content_type="text/event-stream",
    )
    for name, value in STREAM_HEADERS:
        response[name] = value
    return response
