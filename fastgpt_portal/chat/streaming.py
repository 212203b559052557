"""The async SSE view: a turn's answer from its Redis stream to the browser."""

from __future__ import annotations

import logging
import re

from asgiref.sync import sync_to_async
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.template.loader import render_to_string
from django.utils.html import escape

from fastgpt_portal.chat import relay, selectors
from fastgpt_portal.chat.models import Turn
from fastgpt_portal.lib import sse

# A Redis stream id: two integers; at most 19 digits each keeps them within its 64-bit range.
_STREAM_ID = re.compile(r"(?:0|[1-9]\d{0,18})-(?:0|[1-9]\d{0,18})")

log = logging.getLogger("fastgpt_portal.chat")


def _release_connection() -> None:
    # Django closes a request's database connection when its response ends, and an answer
    # stream lasts seconds to minutes: give it back (to the pool) while waiting, or a thousand
    # open streams hold a thousand connections (PostgreSQL's default limit is 100).
    connection.close()


release_connection = sync_to_async(_release_connection)


def _render_turn(turn: Turn) -> str:
    return render_to_string("chat/chat.html#turn", {"turn": turn})


KEEPALIVE_MS = 15_000


async def turn_events(request: HttpRequest, pk: int) -> HttpResponse:
    """The answer as server-sent events, from the Redis stream; resumes after Last-Event-ID."""
    user = await request.auser()
    if not user.is_authenticated:
        return HttpResponse("Log in first.", status=401)
    turn = await selectors.aturn_get_for_user(user=user, pk=pk)
    if turn is None:
        raise Http404("No such turn.")
    last_id = request.headers.get("Last-Event-ID") or "0-0"
    if last_id != "done" and not _STREAM_ID.fullmatch(last_id):
        # The browser echoes our ids; anything else is forged, and one invalid id in the shared
        # XREAD would stall every answer stream in this process (tests/test_bad_input.py).
        last_id = "0-0"

    async def finished_frame() -> bytes:
        fresh = await Turn.objects.select_related("conversation__app").aget(pk=pk)
        html = await sync_to_async(_render_turn)(fresh)
        return sse.frame(html, event="done", id="done")

    async def events():
        if turn.is_finished or last_id == "done":
            yield await finished_frame()
            return
        # One blocking XREAD per web process serves every open stream (relay.StreamHub): a
        # connection each would need a Redis connection and a round trip per event per browser.
        subscription = await relay.stream_hub().subscribe(
            relay.stream_key(pk, turn.data_id), last_id
        )
        await release_connection()
        try:
            yield sse.frame("", event="open", retry=2000)
            while True:
                entries = await subscription.get(KEEPALIVE_MS / 1000)
                if not entries:
                    # Quiet for a while: make sure the turn has not finished without us
                    # noticing (its stream may have expired), and keep proxies from closing
                    # the connection.
                    status = (
                        await Turn.objects.filter(pk=pk).values_list("status", flat=True).afirst()
                    )
                    if status in Turn.FINISHED:
                        yield await finished_frame()
                        return
                    await release_connection()
                    yield sse.comment("keep-alive")
                    continue
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
                        chunks.append(
                            sse.frame(escape("".join(deltas)), event="delta", id=entry_id)
                        )
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

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache, no-transform"
    response["X-Accel-Buffering"] = "no"
    return response
