"""A sync-only pass-through, last in MIDDLEWARE, so Django runs the middleware chain in one thread.

Under ASGI Django runs every async-capable MiddlewareMixin middleware in async mode, and each
of their process_request/process_response/process_view calls then hops to a thread and back:
about a dozen GIL handoffs per request, 5 ms per request on this 2-core machine and far more
under load (bench/RESULTS.md). With a sync-only middleware innermost, the chain above it runs
synchronously in one thread (one hop in, one out); the views themselves are unchanged: sync
views run in that same thread, async views (the answer stream) on the event loop.
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase


class SyncChainMiddleware:
    sync_capable = True
    async_capable = False

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        return self.get_response(request)
