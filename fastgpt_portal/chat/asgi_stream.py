"""GET /chat/turns/<pk>/events for a logged-in user's own turn, before Django's request cycle.

Every turn opens one answer stream, and a Django request costs the web process about 5 ms of CPU
before the view runs (middleware, request and response objects, three ORM queries for the
session, the user and the turn): half of what a turn costs the web process, and the web process
is what saturates first when many turns start at once (bench/RESULTS.md). Here one SQL query
reads the session, the turn and its owner together, and Django's own session decoding and
session-hash check decide.

Only the case it can decide positively is served here: the session's user is active, logged in
with the model backend, its session hash is current, and it owns the turn. Everything else (no
cookie, an expired or forged session, someone else's turn, a database error, a request that
must be redirected to HTTPS, other session engines) goes on to Django, whose view gives the
canonical 401, 404, 503 or redirect. So this path can serve less than Django, never more.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib.sessions.backends.db import SessionStore
from django.contrib.sessions.models import Session
from django.db import connection
from django.http.cookie import parse_cookie
from django.urls import reverse
from django.utils import timezone
from django.utils.csp import CSP, build_policy

from fastgpt_portal.accounts.middleware import MODEL_BACKEND, vouches_for
from fastgpt_portal.accounts.models import User
from fastgpt_portal.chat import streaming
from fastgpt_portal.chat.models import Conversation, Turn

log = logging.getLogger("fastgpt_portal.chat")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Database sessions, Django's or ours (the same table, read faster: accounts.sessions).
DB_SESSION_ENGINES = ("django.contrib.sessions.backends.db", "fastgpt_portal.accounts.sessions")


@cache
def _sql() -> str:
    t, c, u, s = Turn._meta, Conversation._meta, User._meta, Session._meta
    return (
        f"SELECT s.session_data, u.{u.pk.column}, u.password, u.is_active, t.status, t.data_id"  # noqa: S608 - names from the models
        f" FROM {s.db_table} s, {t.db_table} t"
        f" JOIN {u.db_table} u ON u.{u.pk.column} = t.{t.get_field('user').column}"
        f" JOIN {c.db_table} c ON c.{c.pk.column} = t.{t.get_field('conversation').column}"
        f" WHERE s.session_key = %s AND s.expire_date > %s AND t.{t.pk.column} = %s"
        " AND c.deleted_at IS NULL"
    )


@cache
def _enabled() -> bool:
    # The one query reads the database session table; other engines go through Django.
    return (
        settings.SESSION_ENGINE in DB_SESSION_ENGINES
        and not settings.SESSION_SAVE_EVERY_REQUEST
        and MODEL_BACKEND in settings.AUTHENTICATION_BACKENDS
    )


def _owned_turn(session_key: str, pk: int) -> tuple[str, bool] | None:
    """(data_id, finished) of turn `pk` when the session is a live login of its owner."""
    try:
        with connection.cursor() as cursor:
            now = connection.ops.adapt_datetimefield_value(timezone.now())
            cursor.execute(_sql(), [session_key, now, pk])
            row = cursor.fetchone()
    finally:
        streaming.release_connection()
    if row is None:
        return None
    session_data, user_id, password, is_active, status, data_id = row
    session = SessionStore().decode(session_data)  # {} when tampered with
    if not vouches_for(session, User(pk=user_id, password=password, is_active=is_active)):
        return None
    return data_id, status in Turn.FINISHED


_owned_turn_async = sync_to_async(_owned_turn, thread_sensitive=False)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _is_secure(scope: Scope) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, expected = proxy
        header = name.removeprefix("HTTP_").lower().replace("_", "-").encode()
        value = _header(scope, header)
        return value is not None and value.split(",", 1)[0].strip() == expected
    return False


@cache
def _response_headers(secure: bool) -> tuple[tuple[bytes, bytes], ...]:
    """What Django's middleware would add to the view's response (tests/test_asgi_stream.py
    compares the two). Built once, like _enabled(): it reads only settings."""
    headers = [("Content-Type", "text/event-stream"), *streaming.STREAM_HEADERS]
    headers.append(("Vary", "Cookie"))
    if settings.SECURE_CONTENT_TYPE_NOSNIFF:
        headers.append(("X-Content-Type-Options", "nosniff"))
    if settings.SECURE_REFERRER_POLICY:
        headers.append(("Referrer-Policy", settings.SECURE_REFERRER_POLICY))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append(("Cross-Origin-Opener-Policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY))
    headers.append(("X-Frame-Options", settings.X_FRAME_OPTIONS))
    for name, config in [
        (CSP.HEADER_ENFORCE, settings.SECURE_CSP),
        (CSP.HEADER_REPORT_ONLY, settings.SECURE_CSP_REPORT_ONLY),
    ]:
        if config:
            headers.append((str(name), build_policy(config)))  # no nonce: nothing to run
    if secure and settings.SECURE_HSTS_SECONDS:
        hsts = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            hsts += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            hsts += "; preload"
        headers.append(("Strict-Transport-Security", hsts))
    return tuple((k.lower().encode(), v.encode("latin-1")) for k, v in headers)


class EventStreamApp:
    """ASGI: answer streams of the user's own turns here, every other request to Django."""

    def __init__(self, django: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.django = django
        self._prefix: str | None = None

    def _turn_pk(self, scope: Scope) -> int | None:
        if scope["type"] != "http" or scope["method"] != "GET" or not _enabled():
            return None
        if self._prefix is None:
            # "/chat/turns/0/events" -> ("/chat/turns/", "/events"), from the URLconf itself.
            head, _, tail = reverse("chat:turn-events", args=[0]).rpartition("/0/")
            self._prefix, self._suffix = head + "/", "/" + tail
        path: str = scope["path"]
        if not (path.startswith(self._prefix) and path.endswith(self._suffix)):
            return None
        digits = path[len(self._prefix) : len(path) - len(self._suffix)]
        # What the URLconf's <int:pk> accepts, kept to a size the database column takes.
        if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
            return None
        return int(digits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        pk = self._turn_pk(scope)
        if pk is not None:
            secure = _is_secure(scope)
            if secure or not settings.SECURE_SSL_REDIRECT:
                cookie = parse_cookie(_header(scope, b"cookie") or "")
                session_key = cookie.get(settings.SESSION_COOKIE_NAME)
                if session_key:
                    try:
                        owned = await _owned_turn_async(session_key, pk)
                    except Exception:
                        # Django's view meets the same error and answers it (503 for a lost
                        # database); nothing here can do better.
                        owned = None
                    if owned is not None:
                        await self._stream(scope, receive, send, pk, owned, secure)
                        return
        await self.django(scope, receive, send)

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        pk: int,
        owned: tuple[str, bool],
        secure: bool,
    ) -> None:
        data_id, finished = owned
        last_id = streaming.clean_last_id(_header(scope, b"last-event-id"))
        body = streaming.answer_events(pk, data_id, finished, last_id)

        async def pump() -> None:
            try:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": _response_headers(secure),
                    }
                )
                async for chunk in body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await body.aclose()  # unsubscribes from the hub

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        # A browser that goes away is noticed at once, not at the next event it would get.
        tasks = [asyncio.ensure_future(pump()), asyncio.ensure_future(until_disconnect())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        error = results[0]
        if isinstance(error, Exception):
            log.error("answer stream of turn %s failed", pk, exc_info=error)
