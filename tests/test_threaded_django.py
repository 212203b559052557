"""lib.threaded_django: Django's sync views answered by one call to a pooled thread, with the
responses Django's own ASGI handler gives; async views still go to that handler.

In-process, with the real database. Through uvicorn every page, form and static file of the
other server tests (test_chat_path, test_xss, test_database_unavailable) comes this way too."""

from __future__ import annotations

import asyncio
import re
import threading
from urllib.parse import urlencode

import pytest
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_started
from django.db import connection

from fastgpt_portal.lib.threaded_django import ThreadedDjango
from tests.conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)


def call(app, path: str, *, method: str = "GET", body: bytes = b"", headers=()) -> dict:
    """One request through the ASGI app: its status, headers (with every Set-Cookie) and body."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"), *headers],
    }  # fmt: skip
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    headers = [(k.decode().lower(), v.decode()) for k, v in sent[0]["headers"]]
    return {
        "status": sent[0]["status"],
        "headers": headers,
        "cookies": {v.split("=", 1)[0]: v for k, v in headers if k == "set-cookie"},
        "body": b"".join(m.get("body", b"") for m in sent[1:]).decode(),
    }


def cookie_header(cookies: dict[str, str]) -> tuple[bytes, bytes]:
    return b"cookie", "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()


@pytest.fixture
def threaded():
    return ThreadedDjango(2)


def test_a_page_is_the_response_djangos_asgi_handler_gives(threaded):
    ours, django = call(threaded, "/accounts/login/"), call(ASGIHandler(), "/accounts/login/")
    token = re.compile(r'(csrfmiddlewaretoken" value=|X-CSRFToken": |-csrftoken": )"[^"]+"')
    assert ours["status"] == django["status"] == 200
    assert token.sub("", ours["body"]) == token.sub("", django["body"])
    assert sorted(k for k, _ in ours["headers"]) == sorted(k for k, _ in django["headers"])
    assert ours["cookies"].keys() == django["cookies"].keys() == {"csrftoken"}

    missing = call(threaded, "/no/such/page")
    assert missing["status"] == call(ASGIHandler(), "/no/such/page")["status"] == 404


def test_a_form_is_read_and_handled_in_a_pool_thread(threaded, alice):
    threads: list[str] = []

    def started(**kwargs) -> None:
        threads.append(threading.current_thread().name)

    request_started.connect(started)
    try:
        page = call(threaded, "/accounts/login/")
        csrf = page["cookies"]["csrftoken"].split(";", 1)[0].split("=", 1)[1]
        form = urlencode(
            {"username": "alice", "password": "alice-pass-123", "csrfmiddlewaretoken": csrf}
        ).encode()
        login = call(
            threaded, "/accounts/login/", method="POST", body=form,
            headers=[
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"content-length", str(len(form)).encode()),
                cookie_header({"csrftoken": csrf}),
            ],
        )  # fmt: skip
    finally:
        request_started.disconnect(started)
    assert login["status"] == 302, login["body"][:300]
    assert "sessionid" in login["cookies"], "logged in: the form body reached the view"
    assert threads and all(name.startswith("django-request") for name in threads)


def test_each_request_gives_its_database_connection_back(alice):
    threaded = ThreadedDjango(1)
    page = call(threaded, "/", headers=[cookie_header(session_cookie(alice))])
    assert page["status"] == 200, "a logged-in page: the session and the user from the database"

    def holds_a_connection() -> bool:
        return connection.connection is not None

    assert threaded._executor.submit(holds_a_connection).result() is False


def test_an_async_view_is_left_to_djangos_asgi_handler():
    asked: list[str] = []

    class Recorder:
        async def __call__(self, scope, receive, send) -> None:
            asked.append(scope["path"])
            await send({"type": "http.response.start", "status": 418, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    threaded = ThreadedDjango(1, async_app=Recorder())
    assert call(threaded, "/chat/turns/1/events")["status"] == 418
    assert call(threaded, "/accounts/login/")["status"] == 200
    assert asked == ["/chat/turns/1/events"]
    # And Django's handler answers it as before: not logged in.
    answered = call(ThreadedDjango(1), "/chat/turns/1/events")
    assert (answered["status"], answered["body"]) == (401, "Log in first.")
