"""Django's ASGI handler with each request's sync part run as one call in a pooled thread.

Django's ASGIHandler runs sync middleware and views through asgiref: a new thread for every
request (its ThreadSensitiveContext), and hops between that thread and the event loop for the
request_started and request_finished signals and around the middleware chain. On this 2-core
machine that machinery cost a send 1.4 ms of CPU out of 4.8 (bench/RESULTS.md). Here a request
is read on the event loop, then handled from signals to response by Django's sync
BaseHandler.get_response(), the way a WSGI server runs it, in one call to a fixed pool of
threads; the response is written back on the loop. The requests, middleware, views and
responses are Django's own; only the thread handoffs differ.

Async views (the answer stream's fallback, chat.streaming.turn_events) still go through
Django's ASGIHandler, which runs them on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import IO, Any

from asgiref.sync import iscoroutinefunction
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse, HttpResponseBase
from django.urls import Resolver404, get_resolver, set_script_prefix

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ThreadedDjango(ASGIHandler):
    """An ASGI application serving Django's sync views from `threads` pooled threads."""

    def __init__(self, threads: int, async_app: ASGIHandler | None = None) -> None:
        # BaseHandler's own __init__, then the sync middleware chain (ASGIHandler loads the
        # async one): every middleware and the view run in the calling thread, no hops.
        super(ASGIHandler, self).__init__()
        self.load_middleware(is_async=False)
        self.async_app = async_app or ASGIHandler()
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="django-request")

    def _is_async_view(self, scope: Scope) -> bool:
        path = scope["path"].removeprefix(get_script_prefix(scope).rstrip("/"))
        try:
            match = get_resolver().resolve(path)
        except Resolver404:
            return False
        return iscoroutinefunction(match.func)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._is_async_view(scope):
            await self.async_app(scope, receive, send)
            return
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        with closing(body_file):
            response = await loop.run_in_executor(self._executor, self._respond, scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:
                    await loop.run_in_executor(self._executor, response.close)

    def _respond(self, scope: Scope, body_file: IO[bytes]) -> HttpResponseBase:
        """In a pool thread: the request from signals to response, as a WSGI server runs it."""
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
        if not response.streaming:
            # The content is in memory: finish the request here, in its own thread, so the
            # request_finished signal gives back this thread's database connection.
            response.close()
        else:
            # Read on the event loop (static files, a few kB); the connection goes back now.
            close_old_connections()
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size
        return response
