"""The app key never leaves the portal: not in a page, a log line, a command's output, an error
report or an export. An app gets a distinctive key, the portal is exercised for real (a real
worker, the ASGI server, the admin, the commands), and everything it wrote is searched."""

from __future__ import annotations

import io
import json
import logging
import secrets
import sys

import httpx
import pytest
from django.core import mail
from django.core.management import call_command
from django.core.management.base import CommandError
from django.core.signals import got_request_exception
from django.test import Client, RequestFactory
from django.views.debug import ExceptionReporter

from fastgpt_portal.chat.models import Turn
from fastgpt_portal.upstream.client import FastGPTClient
from fastgpt_portal.upstream.double import DOUBLE_APP_ID, FastGPTDouble
from fastgpt_portal.upstream.models import App
from tests.conftest import session_cookie, wait_until

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]

# Made at run time, so it is not in this file's source either (tracebacks quote source lines).
# FastGPT keys are fastgpt- plus letters and digits; the double splits keys at "-".
SECRET_PART = "Canary" + secrets.token_hex(24)
KEY = "fastgpt-" + SECRET_PART


def fragments(key: str) -> list[str]:
    """The key, its secret part and its middle: a leak of any of them is a leak."""
    secret = key.split("-", 1)[1]
    return [key, secret, secret[len(secret) // 4 : -len(secret) // 4]]


def assert_no_key(where: str, text: str | bytes, key: str = KEY) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for fragment in fragments(key):
        at = text.find(fragment)
        assert at < 0, f"the app key leaked into {where}: …{text[max(0, at - 120) : at + 80]}…"


def test_the_leak_check_itself_finds_a_key():
    with pytest.raises(AssertionError):
        assert_no_key("a sample", f"log line with the middle {fragments(KEY)[2]} of the key")


@pytest.fixture
def upstream():
    """A FastGPT double of its own that knows the distinctive key, so its turns succeed."""
    with FastGPTDouble(keys={KEY: {"app_id": DOUBLE_APP_ID, "name": "canary key"}}) as double:
        yield double


@pytest.fixture
def capture_all_logs(caplog):
    # Everything, including the libraries' DEBUG output (httpx logs requests at INFO/DEBUG).
    for name in (None, "httpx", "httpcore", "django", "celery", "fastgpt_portal"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def finished(pk: int) -> Turn | None:
    turn = Turn.objects.get(pk=pk)
    return turn if turn.is_finished else None


def read_sse(url: str, cookies: dict) -> str:
    with httpx.stream("GET", url, cookies=cookies, timeout=20) as response:
        assert response.status_code == 200
        return "".join(response.iter_text())


def test_the_key_is_in_no_page_log_or_output_after_a_working_and_a_rejected_turn(
    client, admin_client, alice, upstream, fastgpt, worker, portal_server, capture_all_logs
):
    working = App.objects.create(name="Canary", base_url=upstream.url, api_key=KEY)
    # The shared double does not know this key: FastGPT's 514 unAuthApiKey, for real.
    rejected = App.objects.create(name="Rejected canary", base_url=fastgpt.url, api_key=KEY)
    seen: dict[str, str | bytes] = {}

    client.force_login(alice)
    turns = {}
    for app in (working, rejected):
        response = client.post("/chat/send", {"text": f"Hello {app.name}", "app": app.slug})
        assert response.status_code == 302, response.content
        turn = Turn.objects.latest("pk")
        turns[app.slug] = wait_until(lambda t=turn: finished(t.pk), message="no answer")
    assert turns[working.slug].status == Turn.Status.DONE, turns[working.slug].error
    failed = turns[rejected.slug]
    assert failed.status == Turn.Status.FAILED
    assert "rejected the app key (514 unAuthApiKey)" in failed.error
    assert [r["headers"]["authorization"] for r in upstream.received] == [f"Bearer {KEY}"], (
        "the key was really used, so a leak had every chance to happen"
    )

    # The pages a user sees, the answer streams (from the ASGI server) and the partials.
    for turn in turns.values():
        seen[f"conversation page {turn.conversation_id}"] = client.get(
            f"/c/{turn.conversation_id}/"
        ).content
        seen[f"turn partial {turn.pk}"] = client.get(
            f"/chat/turns/{turn.pk}/", HTTP_HX_REQUEST="true"
        ).content
        seen[f"answer stream {turn.pk}"] = read_sse(
            f"{portal_server.url}/chat/turns/{turn.pk}/events", session_cookie(alice)
        )
        seen[f"retry of turn {turn.pk}"] = client.post(
            f"/chat/turns/{turn.pk}/retry", HTTP_HX_REQUEST="true"
        ).content
    for url in ("/", f"/?app={rejected.slug}", "/history/", "/healthz", "/metrics"):
        response = client.get(url)
        seen[f"page {url}"] = response.content
        seen[f"headers of {url}"] = str(response.headers)

    # The admin: lists, forms, history, search, delete confirmation and the key check.
    for app in (working, rejected):
        for url in (
            "/admin/upstream/app/",
            "/admin/upstream/app/?q=canary",
            "/admin/upstream/app/add/",
            f"/admin/upstream/app/{app.pk}/change/",
            f"/admin/upstream/app/{app.pk}/history/",
            f"/admin/upstream/app/{app.pk}/delete/",
        ):
            seen[f"admin {url}"] = admin_client.get(url).content
    checked = admin_client.post(
        "/admin/upstream/app/",
        {"action": "check_apps", "_selected_action": [working.pk, rejected.pk]},
        follow=True,
    )
    assert "does not know this key" in checked.text, "the check really ran"
    seen["admin check action"] = checked.content

    # The command line.
    out, err = io.StringIO(), io.StringIO()
    call_command("portal_app", "list", stdout=out, stderr=err)
    with pytest.raises(CommandError) as failure:
        call_command("portal_app", "check", stdout=out, stderr=err)
    seen["portal_app list/check output"] = out.getvalue() + err.getvalue() + str(failure.value)
    assert working.masked_key in seen["portal_app list/check output"]

    # What was stored beside the key, and every log: this process, the worker, the web server.
    for turn in Turn.objects.all():
        seen[f"stored turn {turn.pk}"] = json.dumps(
            [turn.question, turn.answer, turn.error, turn.flow_responses], default=str
        )
    for app in App.objects.all():
        seen[f"stored health of {app.slug}"] = app.health_message
    seen["log records of this process"] = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in capture_all_logs.records
    )
    seen["worker log"] = worker.log_path.read_text()
    seen["web server log"] = portal_server.log_path.read_text()

    assert f"turn {failed.pk} failed" in seen["worker log"], "the worker logged the failure"
    for where, text in seen.items():
        assert_no_key(where, text)


def test_an_export_carries_the_key_only_encrypted_and_imports_back(tmp_path):
    app = App.objects.create(name="Exported", base_url="http://127.0.0.1:9", api_key=KEY)
    dump = tmp_path / "apps.json"
    call_command("dumpdata", "upstream.App", output=str(dump), stdout=io.StringIO())
    assert_no_key("dumpdata", dump.read_text())
    assert json.loads(dump.read_text())[0]["fields"]["api_key"].startswith("gAAAAA")

    App.objects.all().delete()
    call_command("loaddata", str(dump), stdout=io.StringIO())
    assert App.objects.get(pk=app.pk).api_key == KEY


# ---------------------------------------------------------------------------- error reports


def report_of(exc_info, request=None) -> tuple[str, str]:
    """Django's error report (text, as mailed, and HTML, as mailed with include_html)."""
    reporter = ExceptionReporter(request, *exc_info)
    return reporter.get_traceback_text(), reporter.get_traceback_html()


def from_client_code(exc: BaseException):
    # Start at the first frame below this file: the test's own frames hold the key on purpose.
    return type(exc), exc, exc.__traceback__.tb_next


def test_an_error_report_hides_the_key_held_by_the_client_constructor(settings):
    settings.DEBUG = False  # error reports are filtered only outside DEBUG, as in production
    with pytest.raises(AttributeError) as caught:
        FastGPTClient(None, KEY)  # a bug: no base URL
    text, html = report_of(from_client_code(caught.value))
    assert "api_key" in html, "the frame's variables are in the report"
    assert_no_key("the error report's text", text)
    assert_no_key("the error report's HTML", html)


def test_an_error_report_hides_the_key_inside_httpx_frames(settings):
    # A key httpx cannot encode (a character pasted from a document) fails deep inside httpx,
    # whose frames hold the Authorization header: _probe's @sensitive_variables() covers them.
    settings.DEBUG = False
    odd_key = KEY + "é"
    with pytest.raises(UnicodeEncodeError) as caught:
        FastGPTClient("http://127.0.0.1:9", odd_key).check()
    text, html = report_of(from_client_code(caught.value))
    assert "httpx" in html, "the report reaches into httpx's frames"
    assert_no_key("the error report's text", text, odd_key)
    assert_no_key("the error report's HTML", html, odd_key)


def test_an_error_report_hides_an_app_key_posted_to_the_admin(settings):
    settings.DEBUG = False
    password = secrets.token_hex(8)
    request = RequestFactory().post(
        "/admin/upstream/app/add/", {"name": "x", "api_key": KEY, "password": password}
    )
    try:
        raise RuntimeError("saving the app failed")
    except RuntimeError:
        text, html = report_of(sys.exc_info(), request)
    assert "api_key" in text, "the POST data is in the report, with its value hidden"
    assert_no_key("the report's POST data", text)
    assert_no_key("the report's POST data (HTML)", html)
    assert password not in text + html


def test_an_unhandled_error_in_the_admin_shows_a_plain_500_and_mails_no_key(
    admin_user, settings, capture_all_logs
):
    # The admin's "check" action with a key httpx cannot send: an unhandled exception, for real.
    # (The admin and portal_app refuse such a key; stored behind their back, it still crashes.)
    settings.DEBUG = False
    settings.ADMINS = ["ops@example.org"]
    odd_key = KEY + "é"
    app = App.objects.create(name="Odd", base_url="http://127.0.0.1:9", api_key=odd_key)
    reports: list[str] = []

    def capture(sender, request=None, **kwargs):
        reports.extend(report_of(sys.exc_info(), request))

    got_request_exception.connect(capture)
    browser = Client(raise_request_exception=False)
    browser.force_login(admin_user)
    try:
        response = browser.post(
            "/admin/upstream/app/", {"action": "check_apps", "_selected_action": [app.pk]}
        )
    finally:
        got_request_exception.disconnect(capture)

    assert response.status_code == 500
    assert "Something went wrong" in response.text
    assert "Traceback" not in response.text
    assert reports, "Django produced an error report"
    assert len(mail.outbox) == 1, "the administrators were mailed"
    message = mail.outbox[0]
    for where, text in [
        ("the 500 page", response.content),
        ("the error report (text)", reports[0]),
        ("the error report (HTML)", reports[1]),
        ("the mail to the admins", message.subject + message.body),
        ("the log", capture_all_logs.text),
    ]:
        assert_no_key(where, text, odd_key)
