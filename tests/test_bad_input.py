"""Bad input gets a clear answer: never a 500, nothing stored half-way, nothing executable.

Questions that are empty, too long, full of control characters or not UTF-8; forged and foreign
ids; posts without a CSRF token; raw bytes in headers sent over a real socket; a 10 MB answer
and a malformed event stream from FastGPT through the real worker. XSS payloads have their own
corpus in tests/security/test_xss.py."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
from django.test import Client

from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib.markdown import MAX_RENDER_CHARS, render
from tests.conftest import session_cookie, wait_until

pytestmark = pytest.mark.django_db


def send(client: Client, text: str, **extra) -> httpx.Response:
    return client.post("/chat/send", {"text": text, **extra}, HTTP_HX_REQUEST="true")


def nothing_stored() -> bool:
    return Turn.objects.count() == 0 and Conversation.objects.count() == 0


# ---------------------------------------------------------------------------- questions


@pytest.mark.parametrize(
    "text", ["", " ", "\n\n\t ", "\r\n", "\x01\x02\x1b\x7f", " \x0b\x0c "], ids=repr
)
def test_an_empty_question_is_refused_clearly(client, alice, demo_app, text):
    client.force_login(alice)
    response = send(client, text, app=demo_app.slug)
    assert response.status_code == 422
    assert "Type a message first." in response.text or "This field is required." in response.text
    assert nothing_stored()


def test_a_question_one_over_the_limit_is_refused_with_the_numbers(client, alice, demo_app):
    from django.conf import settings

    limit = settings.PORTAL_MAX_QUESTION_CHARS
    client.force_login(alice)
    response = send(client, "x" * (limit + 1), app=demo_app.slug)
    assert response.status_code == 422
    assert f"The message is {limit + 1:,} characters long; the limit is {limit:,}." in (
        response.text
    )
    assert nothing_stored()
    assert send(client, "x" * limit, app=demo_app.slug).status_code == 200, "the limit itself"


def test_the_limit_counts_characters_not_bytes(client, alice, demo_app, settings):
    settings.PORTAL_MAX_QUESTION_CHARS = 10
    client.force_login(alice)
    assert send(client, "😀" * 10, app=demo_app.slug).status_code == 200
    assert send(client, "😀" * 11, app=demo_app.slug).status_code == 422


def test_a_body_too_large_to_read_gets_a_plain_400(client, alice, demo_app):
    client.force_login(alice)
    response = send(client, "x" * 3_000_000, app=demo_app.slug)
    assert response.status_code == 400
    assert "too large or malformed" in response.text
    assert nothing_stored()


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("he\x07llo\x1b", "hello"),
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("line one\r\nline two\rline three", "line one\nline two\nline three"),
        ("tab\tstays", "tab\tstays"),
        ("\u202eright-to-left override stays visible text", "\u202eright-to-left override "
         "stays visible text"),
    ],
    ids=["bell-escape", "ansi", "line-ends", "tab", "bidi"],
)  # fmt: skip
def test_control_characters_are_removed_and_line_ends_normalised(
    client, alice, demo_app, typed, stored
):
    client.force_login(alice)
    assert send(client, typed, app=demo_app.slug).status_code == 200
    assert Turn.objects.get().question == stored


def test_a_null_character_is_refused_clearly(client, alice, demo_app):
    client.force_login(alice)
    response = send(client, "he\x00llo", app=demo_app.slug)
    assert response.status_code == 422
    assert "Null characters are not allowed" in response.text
    assert nothing_stored()


# ---------------------------------------------------------------------------- not UTF-8


@pytest.mark.parametrize(
    "body",
    [
        b"text=\xff\xfehello&app=helpdesk",  # raw bytes that are not UTF-8
        b"text=%FF%FEhello&app=helpdesk",  # percent-escapes of bytes that are not UTF-8
        b"text=%ED%A0%80&app=helpdesk",  # an encoded UTF-16 surrogate
        b"text=%C0%AF&app=helpdesk",  # an overlong encoding of "/"
    ],
    ids=["raw", "percent", "surrogate", "overlong"],
)
def test_a_form_that_is_not_utf8_is_refused_not_stored_as_mojibake(client, alice, demo_app, body):
    client.force_login(alice)
    response = client.generic(
        "POST", "/chat/send", body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400
    assert "could not read this request" in response.text
    assert nothing_stored()


def test_a_form_declaring_another_charset_is_refused(client, alice, demo_app):
    client.force_login(alice)
    response = client.generic(
        "POST", "/chat/send", b"text=\xe9t\xe9&app=helpdesk",
        content_type="application/x-www-form-urlencoded; charset=latin-1",
    )  # fmt: skip
    assert response.status_code == 400
    assert nothing_stored()


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'--B\r\nContent-Disposition: form-data; name="text"\r\n\r\n\xff\xfehi\r\n--B--\r\n',
         "multipart/form-data; boundary=B"),
        (b"garbage", "multipart/form-data; boundary=\xff"),
        (b"garbage", "multipart/form-data"),
        (b'{"text": "hi"}', "application/json"),
        (b"\xff" * 100, "text/plain"),
    ],
    ids=["multipart-value", "multipart-boundary", "multipart-no-boundary", "json", "binary"],
)  # fmt: skip
def test_other_malformed_bodies_never_cause_a_500(client, alice, demo_app, body, content_type):
    client.force_login(alice)
    response = client.generic(
        "POST", "/chat/send", body, content_type=content_type, HTTP_HX_REQUEST="true"
    )
    # The portal's forms are never multipart: Django decodes a bad multipart value with
    # visible replacement characters, which is what the user then sees as their question.
    assert response.status_code in (200, 400, 422), response.content[:300]
    assert [t.question for t in Turn.objects.all()] in ([], ["\ufffd\ufffdhi"])


@pytest.mark.parametrize(
    "header",
    ["HTTP_HX_REQUEST", "HTTP_HX_TARGET", "HTTP_HX_CURRENT_URL", "HTTP_REFERER", "HTTP_ACCEPT",
     "HTTP_USER_AGENT", "HTTP_ACCEPT_LANGUAGE", "HTTP_X_FORWARDED_FOR"],
)  # fmt: skip
def test_undecodable_header_values_are_harmless(client, alice, demo_app, header):
    # WSGI hands header values over as latin-1 strings: this is what raw 0xff bytes become.
    client.force_login(alice)
    junk = b"\xff\xfe\xc3(".decode("latin-1")
    for method, url in [("get", "/"), ("get", "/history/"), ("post", "/chat/send")]:
        data = {"text": "hello", "app": demo_app.slug} if method == "post" else None
        response = getattr(client, method)(url, data, **{header: junk})
        assert response.status_code in (200, 302, 422), (header, url, response.status_code)


# ---------------------------------------------------------------------------- over a real socket


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send bytes as they are (no client library would send these) and read the status."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status_line = data.split(b"\r\n", 1)[0]
    return int(status_line.split()[1]), data


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_raw_bytes_in_headers_over_http_never_cause_a_500(alice, demo_app, portal_server):
    cookie = "sessionid=" + session_cookie(alice)["sessionid"]
    cases = [
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie.encode() + b"\r\n"
        b"HX-Request: \xff\xfe\r\nHX-Target: \xc3(\r\nUser-Agent: \xff\r\n\r\n",
        b"GET /history/?q=%FF%FE HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie.encode()
        + b"\r\nAccept-Language: \xff\xfe\r\n\r\n",
        b"GET /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: sessionid=\xff\xfe; "
        b"csrftoken=\xc3(\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\n\r\n",
        b"POST /chat/send HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: " + cookie.encode() + b"\r\n"
        b"X-CSRFToken: \xff\xfe\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: 10\r\n\r\ntext=hello",
    ]  # fmt: skip
    for head in cases:
        status, data = raw_request(portal_server.url, head)
        assert status in (200, 302, 400, 403), (head[:60], data[:300])
    assert Turn.objects.count() == 0
    assert httpx.get(portal_server.url + "/accounts/login/").status_code == 200, "still serving"


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_forged_last_event_id_does_not_stall_answer_streams(alice, demo_app, portal_server):
    """The browser sends Last-Event-ID back; forged, it must not break that stream nor, through
    the shared stream reader, every other one in the process."""
    from fastgpt_portal.chat import relay

    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Stream")
    turns = [
        Turn.objects.create(
            conversation=conversation, user=alice, question="q", status=Turn.Status.RUNNING
        )
        for _ in range(2)
    ]
    for turn in turns:
        relay.Publisher(turn.pk, turn.data_id).publish([("delta", "first words")])
    cookies = session_cookie(alice)
    url = f"{portal_server.url}/chat/turns/{{}}/events"
    for forged in ["garbage", "\xff\xfe".encode().decode("latin-1"), "99999999999999999999999-0",
                   "-1-1", "1-2-3", "0-0 OR 1=1"]:  # fmt: skip
        with httpx.stream(
            "GET", url.format(turns[0].pk), cookies=cookies,
            headers={"Last-Event-ID": forged.encode("latin-1")}, timeout=10,
        ) as forged_stream:  # fmt: skip
            assert forged_stream.status_code == 200
            lines = forged_stream.iter_lines()
            # The other turn, in the same process, still gets its words at once.
            with httpx.stream("GET", url.format(turns[1].pk), cookies=cookies, timeout=10) as other:
                seen = ""
                for line in other.iter_lines():
                    seen += line
                    if "first words" in seen:
                        break
            assert "first words" in seen, forged
            for line in lines:
                if "first words" in line:
                    break


# ---------------------------------------------------------------------------- forged ids

FORGED = ["abc", "-1", "0", "99999999999999999999", "1e3", "%00", "1;DROP TABLE chat_turn", " 1"]


@pytest.fixture
def bobs(bob, demo_app):
    conversation = Conversation.objects.create(user=bob, app=demo_app, title="Bob's secret")
    turn = Turn.objects.create(
        conversation=conversation, user=bob, question="Bob's question", answer="Bob's answer",
        status=Turn.Status.FAILED,
    )  # fmt: skip
    return conversation, turn


def test_forged_and_foreign_ids_in_urls_are_404(client, alice, bobs):
    conversation, turn = bobs
    client.force_login(alice)
    tried = 0
    for pk in [*FORGED, str(conversation.pk)]:
        for method, template in [
            ("get", "/c/{}/"), ("post", "/c/{}/delete"), ("post", "/c/{}/rename"),
        ]:  # fmt: skip
            response = getattr(client, method)(template.format(pk), {"title": "mine now"})
            assert response.status_code == 404, (template, pk, response.status_code)
            tried += 1
    for pk in [*FORGED, str(turn.pk)]:
        for method, template in [
            ("get", "/chat/turns/{}/"), ("post", "/chat/turns/{}/cancel"),
            ("post", "/chat/turns/{}/retry"), ("get", "/chat/turns/{}/events"),
        ]:  # fmt: skip
            response = getattr(client, method)(template.format(pk), HTTP_HX_REQUEST="true")
            assert response.status_code == 404, (template, pk, response.status_code)
            tried += 1
    assert tried == 4 * len(FORGED) * 7 // 4 + 7
    conversation.refresh_from_db()
    turn.refresh_from_db()
    assert conversation.title == "Bob's secret" and conversation.deleted_at is None
    assert turn.status == Turn.Status.FAILED and turn.retries == 0


@pytest.mark.parametrize("pk", [*FORGED, "bob's"])
def test_a_forged_conversation_field_in_send_is_refused(client, alice, bobs, demo_app, pk):
    conversation, _ = bobs
    client.force_login(alice)
    value = str(conversation.pk) if pk == "bob's" else pk
    response = send(client, "Let me in", conversation=value, app=demo_app.slug)
    assert response.status_code in (404, 422), response.status_code
    assert Turn.objects.filter(user=alice).count() == 0
    assert conversation.turns.count() == 1, "nothing was added to Bob's conversation"


@pytest.mark.parametrize("slug", ["no-such-app", "<script>", "../admin", "x" * 500])
def test_an_unknown_or_malformed_app_is_refused(client, alice, demo_app, slug):
    client.force_login(alice)
    response = send(client, "Which app?", app=slug)
    assert response.status_code == 422
    assert nothing_stored()


def test_a_disabled_app_cannot_be_reached_by_its_slug(client, alice, demo_app):
    demo_app.enabled = False
    demo_app.save()
    client.force_login(alice)
    assert send(client, "Still there?", app=demo_app.slug).status_code == 422
    assert nothing_stored()


# ---------------------------------------------------------------------------- CSRF


def test_posts_without_a_csrf_token_are_refused_with_a_clear_page(alice, bobs, demo_app):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    mine = Conversation.objects.create(user=alice, app=demo_app, title="Mine")
    turn = Turn.objects.create(
        conversation=mine, user=alice, question="q", status=Turn.Status.FAILED
    )
    for url, data in [
        ("/chat/send", {"text": "forged", "app": demo_app.slug}),
        (f"/c/{mine.pk}/delete", {}),
        (f"/c/{mine.pk}/rename", {"title": "forged"}),
        (f"/chat/turns/{turn.pk}/retry", {}),
        ("/accounts/logout/", {}),
    ]:
        response = browser.post(url, data, HTTP_HX_REQUEST="true")
        assert response.status_code == 403, url
        assert "This form has expired" in response.text
        assert "security token (CSRF) was missing or out of date" in response.text
    mine.refresh_from_db()
    turn.refresh_from_db()
    assert mine.title == "Mine" and mine.deleted_at is None
    assert turn.status == Turn.Status.FAILED and Turn.objects.count() == 2
    assert browser.get("/").status_code == 200, "still logged in"


def test_a_forged_csrf_token_is_refused_too(alice, demo_app):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    browser.get("/")  # sets the CSRF cookie
    response = browser.post(
        "/chat/send", {"text": "x", "app": demo_app.slug, "csrfmiddlewaretoken": "a" * 64}
    )
    assert response.status_code == 403
    assert nothing_stored()


def test_a_login_without_a_csrf_token_is_refused(alice):
    browser = Client(enforce_csrf_checks=True)
    response = browser.post("/accounts/login/", {"username": "alice", "password": "x"})
    assert response.status_code == 403
    assert "This form has expired" in response.text


# ---------------------------------------------------------------------------- from FastGPT


def test_rendering_is_capped_so_huge_structured_markdown_stays_fast():
    # 1 MB of Markdown lists takes seconds to render in full; only the start is rendered.
    text = "- item *emphasis* `code` [link](https://example.org/x) **bold**\n" * 16_000
    started = time.perf_counter()
    html = render(text + "unique tail")
    elapsed = time.perf_counter() - started
    assert elapsed < 1.5, f"{elapsed:.2f} s"
    assert f"This answer is {len(text) + 11:,} characters long" in html
    assert f"only the first {MAX_RENDER_CHARS:,} are shown here" in html
    assert "unique tail" not in html


def test_an_answer_under_the_cap_is_rendered_whole():
    text = "word " * (MAX_RENDER_CHARS // 5)
    assert "characters long" not in render(text)


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_10_mb_answer_finishes_and_its_page_renders_quickly(
    client, alice, demo_app, fastgpt, worker, portal_server
):
    fastgpt.inject("big_answer", size=10_000_000, chunk=4096)
    client.force_login(alice)
    assert client.post("/chat/send", {"text": "Tell me everything", "app": demo_app.slug})
    turn = Turn.objects.latest("pk")
    turn = wait_until(
        lambda: (t := Turn.objects.get(pk=turn.pk)).is_finished and t, timeout=120,
        message="the 10 MB answer never finished",
    )  # fmt: skip
    assert turn.status == Turn.Status.DONE, turn.error
    assert len(turn.answer) == 10_000_000, "stored whole"

    started = time.perf_counter()
    page = client.get(f"/c/{turn.conversation_id}/")
    elapsed = time.perf_counter() - started
    assert page.status_code == 200
    assert elapsed < 3, f"the page took {elapsed:.2f} s"
    assert "This answer is 10,000,000 characters long; only the first 100,000" in page.text
    assert len(page.content) < 1_000_000, "the page is not 10 MB"

    started = time.perf_counter()
    with httpx.stream(
        "GET", f"{portal_server.url}/chat/turns/{turn.pk}/events",
        cookies=session_cookie(alice), timeout=30,
    ) as response:  # fmt: skip
        done = b"".join(response.iter_bytes())
    assert time.perf_counter() - started < 3
    assert b"characters long; only the first" in done and len(done) < 1_000_000


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_malformed_event_stream_fails_the_turn_with_a_reason_and_a_retry(
    client, alice, demo_app, fastgpt, worker
):
    fastgpt.inject("malformed_sse")
    client.force_login(alice)
    client.post("/chat/send", {"text": "Garbled?", "app": demo_app.slug})
    turn = Turn.objects.latest("pk")
    turn = wait_until(lambda: (t := Turn.objects.get(pk=turn.pk)).is_finished and t)
    assert turn.status == Turn.Status.FAILED
    assert "FastGPT sent a malformed 'answer' event (not valid JSON)" in turn.error

    page = client.get(f"/c/{turn.conversation_id}/").text
    assert "FastGPT sent a malformed" in page
    assert f'hx-post="/chat/turns/{turn.pk}/retry"' in page and ">Retry</button>" in page

    # Retry asks again, and FastGPT answers properly this time.
    assert client.post(f"/chat/turns/{turn.pk}/retry").status_code == 302
    turn = wait_until(lambda: (t := Turn.objects.get(pk=turn.pk)).status == "done" and t)
    assert turn.answer.startswith("You asked: Garbled?")
