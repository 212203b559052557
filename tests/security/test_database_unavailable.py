"""A lost database: a clear 503 page, one log line for the admins, nothing half-written.

The real thing first: the portal under uvicorn with DATABASE_URL pointing at a port where no
PostgreSQL listens. Then, in this process, a database that fails in the middle of a request
(Django's execute_wrapper raises the error the driver would)."""

from __future__ import annotations

import secrets

import httpx
import pytest
from django.db import OperationalError, connection
from django.test import Client

from fastgpt_portal.chat.models import Conversation, Turn
from tests.conftest import start_web_server, stop_process, wait_until

MESSAGE = (
    "The portal's database is unavailable right now. Nothing was saved; try again in a minute."
)


@pytest.fixture(scope="module")
def portal_without_database(tmp_path_factory):
    import os

    log = tmp_path_factory.mktemp("nodb") / "web.log"
    env = {
        **os.environ,
        "DATABASE_URL": "postgres://postgres@127.0.0.1:1/portal",
        "REDIS_URL": os.environ["REDIS_URL"],
        # With the connection pool (settings.py) a request waits this long for a connection
        # before the database counts as gone; 30 s by default.
        "DB_POOL_TIMEOUT": "2",
        "PYTHONUNBUFFERED": "1",
    }
    # A static file: the only kind of answer that needs no database.
    proc = start_web_server(env, log, ready_path="/static/css/portal.css")
    yield proc
    stop_process(proc)


@pytest.fixture
def browser(portal_without_database):
    """A browser that was logged in: it sends a session cookie and a CSRF cookie and token."""
    csrf = secrets.token_urlsafe(24)[:32].replace("-", "a").replace("_", "b")
    cookies = {"sessionid": secrets.token_hex(16), "csrftoken": csrf}
    with httpx.Client(
        base_url=portal_without_database.url,
        cookies=cookies,
        headers={"X-CSRFToken": csrf},
        timeout=10,
    ) as client:
        yield client


def assert_unavailable_page(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text[:500]
    assert MESSAGE in response.text
    assert response.headers["Retry-After"] == "60"
    assert "Traceback" not in response.text and "OperationalError" not in response.text
    assert "<script" not in response.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/accounts/login/"),
        ("GET", "/history/"),
        ("GET", "/admin/"),
        ("POST", "/chat/send"),
        ("POST", "/accounts/login/"),
        ("GET", "/chat/turns/1/events"),
    ],
)
def test_pages_answer_503_with_a_clear_message(browser, method, path):
    data = {"text": "Is anybody there?", "username": "alice", "password": "x"}
    response = browser.request(method, path, data=data if method == "POST" else None)
    assert_unavailable_page(response)


def test_a_first_visit_without_a_session_also_gets_the_page(portal_without_database):
    # No session cookie: nothing to read until the login form is submitted.
    with httpx.Client(base_url=portal_without_database.url, timeout=10) as client:
        page = client.get("/accounts/login/")
        token = page.cookies.get("csrftoken") or client.cookies.get("csrftoken")
        form = {"username": "alice", "password": "x", "csrfmiddlewaretoken": token or ""}
        assert_unavailable_page(client.post("/accounts/login/", data=form))


def test_healthz_reports_the_database_down(portal_without_database):
    response = httpx.get(portal_without_database.url + "/healthz", timeout=10)
    assert response.status_code == 503
    body = response.json()
    assert body["ok"] is False
    assert body["database"]["ok"] is False
    assert body["redis"]["ok"] is True, "only the database is down"


def test_each_refusal_is_logged_as_one_line_for_the_admins(browser, portal_without_database):
    marker = f"/history/?probe={secrets.token_hex(4)}"
    browser.get(marker)
    path = marker.split("?")[0]
    log = portal_without_database.log_path

    def logged():
        return [line for line in log.read_text().splitlines() if "database unavailable" in line]

    lines = wait_until(lambda: [x for x in logged() if f"GET {path} answered 503" in x])
    # The root cause: the driver's error, or the pool's timeout when PostgreSQL is pooled.
    assert "(OperationalError:" in lines[-1] or "(PoolTimeout:" in lines[-1]
    assert "Traceback" not in log.read_text(), "one line, not a traceback per request"


# ---------------------------------------------------------------------------- in this process


def fail_on(sql_fragment: str):
    """An execute_wrapper that loses the database when a query contains `sql_fragment`."""

    def wrapper(execute, sql, params, many, context):
        if sql_fragment in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    return wrapper


@pytest.mark.django_db
def test_a_message_is_saved_whole_or_not_at_all(alice, demo_app):
    """The database drops while the turn is being written: the conversation row written just
    before it in the same transaction is rolled back too."""
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    with connection.execute_wrapper(fail_on('INSERT INTO "chat_turn"')):
        response = client.post(
            "/chat/send", {"text": "Half-written?", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
        )
    assert response.status_code == 503
    assert MESSAGE in response.text
    assert Conversation.objects.count() == 0, "no conversation without its first message"
    assert Turn.objects.count() == 0


@pytest.mark.django_db
def test_a_database_lost_while_saving_the_session_is_a_503_too(alice, settings, caplog):
    """The session is saved by SessionMiddleware after the view: the error comes from another
    middleware, not the view, and still becomes the 503 page (with no traceback logged)."""
    settings.SESSION_SAVE_EVERY_REQUEST = True
    client = Client(raise_request_exception=False)
    client.force_login(alice)
    with connection.execute_wrapper(fail_on('UPDATE "django_session"')):
        response = client.get("/history/")
    assert response.status_code == 503
    assert MESSAGE in response.text
    assert any("database unavailable: GET /history/" in r.getMessage() for r in caplog.records)


@pytest.mark.django_db
def test_other_errors_still_get_the_plain_500_page(alice):
    client = Client(raise_request_exception=False)
    client.force_login(alice)

    def broken(execute, sql, params, many, context):
        if "chat_conversation" in sql:
            raise RuntimeError("a bug, not an outage")
        return execute(sql, params, many, context)

    with connection.execute_wrapper(broken):
        response = client.get("/history/")
    assert response.status_code == 500
    assert "Something went wrong" in response.text
    assert MESSAGE not in response.text


@pytest.mark.django_db
def test_a_database_lost_while_another_middleware_renders_is_a_503_too(alice):
    """A post without its CSRF token is refused by CsrfViewMiddleware, whose page reads the
    session (context processors): that error never reaches process_exception."""
    client = Client(enforce_csrf_checks=True, raise_request_exception=False)
    client.force_login(alice)
    with connection.execute_wrapper(fail_on('FROM "django_session"')):
        response = client.post("/chat/send", {"text": "hello"})
    assert response.status_code == 503
    assert MESSAGE in response.text


def test_a_full_connection_pool_says_busy_not_unavailable(rf, monkeypatch):
    from django.db import OperationalError
    from psycopg_pool import PoolTimeout

    from fastgpt_portal.lib import middleware
    from fastgpt_portal.lib.middleware import database_unavailable

    # A pool whose every connection is in use (this test's database may have no pool at all).
    monkeypatch.setattr(middleware, "_pool_busy", lambda exc: True)
    try:
        try:
            raise PoolTimeout("couldn't get a connection after 30.00 sec")
        except PoolTimeout as cause:
            raise OperationalError("couldn't get a connection") from cause
    except OperationalError as exc:
        response = database_unavailable(rf.get("/"), exc)
    assert response.status_code == 503
    assert "too busy" in response.content.decode()
    assert "unavailable" not in response.content.decode()
    assert response["Retry-After"] == "10"
