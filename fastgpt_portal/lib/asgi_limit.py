"""An ASGI wrapper that lets a bounded number of requests into Django at once.

Under ASGI Django runs each request's sync part (middleware, views) in a thread of its own. A
burst of a hundred sends made a hundred threads take turns at the GIL, five milliseconds at a
time: each send took as long as the whole burst (1.2 s p50 at 100 streams here), and so did the
answer streams' own requests, stuck behind them (bench/RESULTS.md). With a few requests inside
and the rest waiting in order on the event loop, the first are answered in milliseconds, the
CPU does the same work with less switching, and the answer-stream front (chat.asgi_stream),
which is outside this limit, stays quick.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ConcurrencyLimit:
    """At most `limit` HTTP requests inside `app` at once (0: no limit). A request leaves when
    its response starts, so a streaming response does not hold a place while it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._semaphores: dict[int, asyncio.Semaphore] = {}

    def _semaphore(self) -> asyncio.Semaphore:
        # One per event loop: an asyncio.Semaphore belongs to the loop that first waits on it.
        loop_id = id(asyncio.get_running_loop())
        semaphore = self._semaphores.get(loop_id)
        if semaphore is None:
            semaphore = self._semaphores[loop_id] = asyncio.Semaphore(self.limit)
        return semaphore

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        semaphore = self._semaphore()
        await semaphore.acquire()
        inside = True

        def leave() -> None:
            nonlocal inside
            if inside:
                inside = False
                semaphore.release()

        async def send_and_leave(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                leave()
            await send(message)

        try:
            await self.app(scope, receive, send_and_leave)
        finally:
            leave()
