"""Content Security Policy without unsafe-inline or unsafe-eval, on the portal and the admin.

The header is checked on every kind of page, the markup is checked for anything the policy
would block (inline scripts, style attributes, event-handler attributes), and a real browser
loads the pages and reports every violation it sees."""

from __future__ import annotations

import os
import re

import pytest

from fastgpt_portal.chat.models import Conversation, Turn
from tests.conftest import launch_chromium


def directives(response) -> dict[str, list[str]]:
    header = response.headers.get("Content-Security-Policy", "")
    assert header, f"no CSP on {response.request['PATH_INFO']}"
    parsed = {}
    for part in header.split(";"):
        name, *values = part.split()
        parsed[name] = values
    return parsed


@pytest.fixture
def pages(client, admin_client, alice, admin_user, demo_app):
    """Every kind of page: (client, url)."""
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Policies")
    Turn.objects.create(
        conversation=conversation, user=alice, question="Hi", answer="**Hello**", status="done"
    )
    client.force_login(alice)
    Turn.objects.create(conversation=conversation, user=alice, question="More?", status="running")
    user_pages = ["/", f"/c/{conversation.pk}/", "/history/", "/history/?q=pol"]
    admin_pages = [
        "/admin/",
        "/admin/upstream/app/",
        "/admin/upstream/app/add/",
        f"/admin/upstream/app/{demo_app.pk}/change/",
        f"/admin/upstream/app/{demo_app.pk}/delete/",
        f"/admin/upstream/app/{demo_app.pk}/history/",
        "/admin/accounts/user/",
        "/admin/accounts/user/add/",
        f"/admin/accounts/user/{alice.pk}/change/",
        f"/admin/accounts/user/{alice.pk}/password/",
        "/admin/password_change/",
    ]
    from django.test import Client

    return (
        [(client, url) for url in user_pages]
        + [(admin_client, url) for url in admin_pages]
        + [(Client(), "/accounts/login/"), (Client(), "/admin/login/"), (client, "/no-such-page/")]
    )


@pytest.mark.django_db
def test_every_page_has_a_policy_without_unsafe_sources(pages):
    for client, url in pages:
        response = client.get(url)
        assert response.status_code in (200, 404), (url, response.status_code)
        policy = directives(response)
        flat = " ".join(" ".join(v) for v in policy.values())
        assert "unsafe-inline" not in flat and "unsafe-eval" not in flat, url
        assert "unsafe-hashes" not in flat and "*" not in flat.split(), url
        assert policy["script-src"][0] == "'self'", url
        assert all(v == "'self'" or v.startswith("'nonce-") for v in policy["script-src"]), url
        assert policy["style-src"] == ["'self'"], url
        assert policy["object-src"] == ["'none'"] and policy["base-uri"] == ["'none'"], url
        assert policy["default-src"] == ["'self'"], url


@pytest.mark.django_db
def test_no_page_needs_what_the_policy_forbids(pages):
    """Inline scripts, style attributes, <style> and on*= handlers would be blocked: none exist,
    so nothing silently stops working (the admin's own templates included)."""
    for client, url in pages:
        html = client.get(url).text
        inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html)
        assert inline == [], f"inline script on {url}: {inline}"
        assert re.findall(r"<[^>]+\sstyle\s*=", html) == [], f"style attribute on {url}"
        assert "<style" not in html, f"<style> element on {url}"
        assert re.findall(r"<[^>]+\son[a-z]+\s*=", html) == [], f"event handler on {url}"


# ---------------------------------------------------------------------------- a real browser

# Registered before any page script: every violation the browser sees is kept on window.
COLLECT_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', function (e) {
  window.__csp.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') +
                    ' at ' + e.sourceFile + ':' + e.lineNumber);
});
"""


@pytest.fixture
def page(tmp_path):
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = launch_chromium(p)
        context = browser.new_context()
        context.add_init_script(COLLECT_VIOLATIONS)
        page = context.new_page()
        page.console_messages = []
        page.on("console", lambda m: page.console_messages.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: page.console_messages.append(f"pageerror: {e}"))
        yield page
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def violations(page) -> list[str]:
    reported = page.evaluate("window.__csp || []")
    console = [m for m in page.console_messages if "Content Security Policy" in m]
    return reported + console


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_the_admin_and_the_chat_run_in_a_browser_without_a_single_violation(
    page, django_user_model, demo_app, portal_server
):
    from playwright.sync_api import expect

    django_user_model.objects.create_superuser("root", "root@example.org", "root-pass-123")
    url = portal_server.url
    page.goto(url + "/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill("root-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(url + "/admin/")
    assert violations(page) == []

    # The detector works: an inline script injected into the page is reported as blocked.
    page.evaluate(
        "document.body.appendChild(Object.assign(document.createElement('script'),"
        " {textContent: 'window.__ran = true'}))"
    )
    page.wait_for_function("window.__csp.length > 0")
    assert page.evaluate("window.__ran") is None, "the policy blocked it"
    page.evaluate("window.__csp = []")
    page.console_messages.clear()

    # The add form's slug is filled by the admin's own JavaScript (prepopulated_fields): it
    # runs under the policy, or this fails.
    page.goto(url + "/admin/upstream/app/add/")
    page.locator("#id_name").press_sequentially("Legal Team")  # keyup events, as a person types
    expect(page.locator("#id_slug")).to_have_value("legal-team")

    # The change list's "select all" checkbox is also the admin's JavaScript.
    page.goto(url + "/admin/upstream/app/")
    page.locator("#action-toggle").check()
    expect(page.locator(f"input[name=_selected_action][value='{demo_app.pk}']")).to_be_checked()

    for path in (
        "/admin/",
        f"/admin/upstream/app/{demo_app.pk}/change/",
        "/admin/accounts/user/",
        "/admin/accounts/user/1/change/",
        "/admin/accounts/user/1/password/",
        "/",
        "/history/",
    ):
        page.goto(url + path)
        page.wait_for_load_state("networkidle")
        assert violations(page) == [], f"{path}: {violations(page)}"

    # The chat page's own scripts work: htmx posts the message, the answer arrives.
    page.goto(url + "/")
    page.get_by_label("Message").fill("Does the policy let htmx work?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#turn-list .question")).to_contain_text("Does the policy let htmx work?")
    assert violations(page) == []
