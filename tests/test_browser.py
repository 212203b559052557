"""The golden path in a real browser: Debian's headless Chromium, driven by Playwright."""

from __future__ import annotations

import os

import pytest

from fastgpt_portal.chat.models import Turn
from tests.conftest import launch_chromium, wait_until

pytestmark = [
    pytest.mark.browser,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def page(tmp_path):
    # Playwright's sync API runs an event loop in this thread; the ORM calls in the test are
    # still plain synchronous code.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context()
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "response",
            lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        page.console_errors = errors
        yield page
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def test_a_user_logs_in_asks_and_watches_the_answer_stream_in(
    page, alice, demo_app, fastgpt, worker, portal_server
):
    from playwright.sync_api import expect

    fastgpt.token_rate = 25
    fastgpt.tokens = 40
    try:
        page.goto(portal_server.url + "/")
        expect(page).to_have_url(portal_server.url + "/accounts/login/?next=/")
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("alice-pass-123")
        page.get_by_role("button", name="Log in").click()

        page.get_by_label("Message").fill("What does the travel policy say?")
        page.get_by_role("button", name="Send").click()

        turn = wait_until(lambda: Turn.objects.filter(user=alice).first(), message="no turn saved")
        answer = page.locator(f"#turn-{turn.pk} .answer-text")
        # Part of the answer is on screen while the turn is still being answered.
        wait_until(
            lambda: answer.inner_text().strip() != "", timeout=15, message="nothing streamed"
        )
        partial_seen_while = Turn.objects.get(pk=turn.pk).status
        assert partial_seen_while in ("running", "done")
        expect(page.locator(f"#turn-{turn.pk}[data-status=done]")).to_be_visible(timeout=20_000)
        turn.refresh_from_db()
        assert turn.status == "done"
        assert page.get_by_label("Message").input_value() == "", "the box is cleared once sent"
        assert f"/c/{turn.conversation_id}/" in page.url
        # The new conversation heads the sidebar, marked as the current one.
        sidebar = page.get_by_role("complementary", name="Your conversations")
        expect(sidebar.get_by_role("listitem").first).to_have_text(
            "What does the travel policy say?"
        )
        expect(sidebar.get_by_text("No conversations yet.")).to_be_hidden()
        assert sidebar.locator("[aria-current=page]").get_attribute("href") == (
            f"/c/{turn.conversation_id}/"
        )
        # A follow-up's answer ends up in view above the composer, not hidden under it.
        page.get_by_label("Message").fill("And for trains?")
        page.get_by_role("button", name="Send").click()
        follow_up = page.locator("[id^=turn-][data-status]").last
        expect(follow_up).to_have_attribute("data-status", "done", timeout=20_000)

        def answer_clears_the_composer() -> bool:
            answer = follow_up.locator(".answer-text").bounding_box()
            return answer["y"] + answer["height"] <= page.locator("#composer").bounding_box()["y"]

        wait_until(answer_clears_the_composer, timeout=5, message="the answer is under the box")

        # A second conversation goes on top of the first.
        page.get_by_role("button", name="New chat").click()
        page.get_by_label("Message").fill("And the expenses policy?")
        page.get_by_role("button", name="Send").click()
        expect(sidebar.get_by_role("listitem")).to_have_text(
            ["And the expenses policy?", "What does the travel policy say?"]
        )
        page.goto(f"{portal_server.url}/c/{turn.conversation_id}/")

        # A reload shows the stored answer.
        page.reload()
        expect(page.locator(f"#turn-{turn.pk} .answer-text")).to_contain_text(
            turn.answer.split()[0]
        )
        assert "What does the travel policy say?" in page.content()
        assert not page.console_errors, page.console_errors
    finally:
        fastgpt.token_rate = 0
        fastgpt.tokens = None


def test_enter_sends_and_shift_enter_adds_a_line(
    page, alice, demo_app, fastgpt, worker, portal_server
):
    page.goto(portal_server.url + "/accounts/login/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("alice-pass-123")
    page.get_by_role("button", name="Log in").click()
    box = page.get_by_label("Message")
    box.fill("line one")
    box.press("Shift+Enter")
    box.type("line two")
    assert box.input_value() == "line one\nline two"
    assert Turn.objects.count() == 0
    box.press("Enter")
    turn = wait_until(lambda: Turn.objects.first(), message="Enter did not send")
    assert turn.question == "line one\nline two"
