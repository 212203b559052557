"""The chat pages without a worker: what the user sees when input is bad."""

from __future__ import annotations

import pytest

from fastgpt_portal.chat.models import Conversation, Turn

pytestmark = pytest.mark.django_db


def test_the_chat_page_has_the_message_box_and_send_button(client, alice, demo_app):
    client.force_login(alice)
    page = client.get("/").text
    assert '<label for="id_text">Message</label>' in page
    assert ">Send</button>" in page
    assert "Demo" not in page or demo_app.is_demo


def test_the_demo_upstream_is_labelled(client, alice, demo_app):
    demo_app.is_demo = True
    demo_app.save()
    client.force_login(alice)
    assert "Demo upstream" in client.get("/").text


def test_an_empty_message_gets_a_clear_error_and_stores_nothing(client, alice, demo_app):
    client.force_login(alice)
    response = client.post(
        "/chat/send", {"text": "   \n ", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "Type a message first." in response.text
    assert Turn.objects.count() == 0 and Conversation.objects.count() == 0


def test_an_oversized_message_is_refused_with_the_limit(client, alice, demo_app, settings):
    settings.PORTAL_MAX_QUESTION_CHARS = 10
    client.force_login(alice)
    response = client.post(
        "/chat/send", {"text": "x" * 11, "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "the limit is 10" in response.text
    assert Turn.objects.count() == 0


def test_control_characters_are_removed(client, alice, demo_app):
    client.force_login(alice)
    client.post(
        "/chat/send", {"text": "he\x07llo\x1b", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    assert Turn.objects.get().question == "hello"


def test_a_null_character_gets_a_clear_error(client, alice, demo_app):
    client.force_login(alice)
    response = client.post(
        "/chat/send", {"text": "he\x00llo", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert "Null characters are not allowed" in response.text
    assert Turn.objects.count() == 0


def test_without_javascript_send_redirects_to_the_conversation(client, alice, demo_app):
    client.force_login(alice)
    response = client.post("/chat/send", {"text": "hello", "app": demo_app.slug})
    conversation = Conversation.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/c/{conversation.pk}/"


def test_a_new_conversation_updates_the_url_and_sidebar(client, alice, demo_app):
    client.force_login(alice)
    response = client.post(
        "/chat/send", {"text": "hello there", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    conversation = Conversation.objects.get()
    assert response["HX-Push-Url"] == f"/c/{conversation.pk}/"
    assert f'value="{conversation.pk}"' in response.text
    # Only the new conversation is prepended to the sidebar, not the whole list re-rendered.
    assert 'id="sidebar"' not in response.text
    assert 'hx-swap-oob="afterbegin:#conversation-list"' in response.text
    assert f'<li><a href="/c/{conversation.pk}/" aria-current="page">hello there</a></li>' in (
        response.text
    )


def test_a_later_message_does_not_touch_the_sidebar(client, alice, demo_app):
    client.force_login(alice)
    client.post("/chat/send", {"text": "first", "app": demo_app.slug}, HTTP_HX_REQUEST="true")
    conversation = Conversation.objects.get()
    response = client.post(
        "/chat/send", {"text": "second", "conversation": conversation.pk}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    assert "conversation-list" not in response.text and "HX-Push-Url" not in response


def test_several_apps_give_a_picker(client, alice, demo_app):
    from fastgpt_portal.upstream.models import App

    App.objects.create(name="Legal", base_url=demo_app.base_url, api_key="k")
    client.force_login(alice)
    page = client.get("/").text
    assert '<select name="app" id="app-picker">' in page
    response = client.post("/chat/send", {"text": "hi", "app": "legal"})
    assert Conversation.objects.get().app.slug == "legal"
    assert response.status_code == 302


def test_a_disabled_app_cannot_be_used(client, alice, demo_app):
    demo_app.enabled = False
    demo_app.save()
    client.force_login(alice)
    response = client.post(
        "/chat/send", {"text": "hi", "app": demo_app.slug}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 422
    assert Turn.objects.count() == 0


def test_history_lists_conversations_newest_first(client, alice, demo_app):
    older = Conversation.objects.create(user=alice, app=demo_app, title="Older")
    newer = Conversation.objects.create(user=alice, app=demo_app, title="Newer")
    Conversation.objects.filter(pk=older.pk).update(updated="2020-01-01T00:00Z")
    client.force_login(alice)
    page = client.get("/history/").text
    assert page.index("Newer") < page.index("Older")
    assert f'href="/c/{newer.pk}/"' in page


def test_history_search_returns_the_partial(client, alice, demo_app):
    Conversation.objects.create(user=alice, app=demo_app, title="Budget 2027")
    Conversation.objects.create(user=alice, app=demo_app, title="Holiday plans")
    client.force_login(alice)
    response = client.get(
        "/history/?q=budget", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="history-list"
    )
    assert "Budget 2027" in response.text and "Holiday" not in response.text
    assert "<html" not in response.text


def test_history_comes_in_pages_and_shows_older_ones_on_request(client, alice, demo_app):
    from fastgpt_portal.chat.views import HISTORY_PAGE_SIZE

    Conversation.objects.bulk_create(
        Conversation(user=alice, app=demo_app, title=f"Budget chat {i:03}")
        for i in range(HISTORY_PAGE_SIZE + 5)
    )
    ordered = list(
        Conversation.objects.filter(user=alice)
        .order_by("-updated", "-pk")
        .values_list("title", flat=True)
    )
    client.force_login(alice)
    first = client.get("/history/").text
    assert ordered[0] in first and ordered[HISTORY_PAGE_SIZE - 1] in first
    assert ordered[HISTORY_PAGE_SIZE] not in first
    assert f"({HISTORY_PAGE_SIZE} of {HISTORY_PAGE_SIZE + 5} shown)" in first
    assert 'href="?page=2"' in first, "works without JavaScript too"
    # htmx swaps the "Show older" row for the next rows (and no further link).
    more = client.get(
        "/history/?q=budget&page=2", HTTP_HX_REQUEST="true", HTTP_HX_TARGET="history-more"
    ).text
    assert "<html" not in more and "<table" not in more
    assert all(title in more for title in ordered[HISTORY_PAGE_SIZE:])
    assert ordered[0] not in more and "Show older" not in more
    assert client.get("/history/?page=999").status_code == 200  # the last page, not an error


def test_deleting_hides_the_conversation_from_its_owner(client, alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app, title="Old chat")
    client.force_login(alice)
    response = client.post(f"/c/{conversation.pk}/delete")
    assert response.status_code == 302
    assert client.get(f"/c/{conversation.pk}/").status_code == 404
    assert "Old chat" not in client.get("/history/").text
    assert Conversation.objects.filter(pk=conversation.pk).exists(), "kept for the audit"


def test_a_failed_turn_shows_the_reason_and_retry(client, alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app)
    Turn.objects.create(
        conversation=conversation, user=alice, question="q", status="failed",
        error="FastGPT rejected the app key.",
    )  # fmt: skip
    client.force_login(alice)
    page = client.get(f"/c/{conversation.pk}/").text
    assert "FastGPT rejected the app key." in page
    assert ">Retry</button>" in page


def test_answers_render_as_sanitised_markdown(client, alice, demo_app):
    conversation = Conversation.objects.create(user=alice, app=demo_app)
    answer = (
        "**bold** <script>alert(1)</script> [x](javascript:alert(1)) <img src=x onerror=alert(1)>"
    )
    Turn.objects.create(
        conversation=conversation, user=alice, question="q", status="done", answer=answer
    )
    client.force_login(alice)
    page = client.get(f"/c/{conversation.pk}/").text
    assert "<strong>bold</strong>" in page
    assert "<script>alert(1)" not in page
    assert 'href="javascript:' not in page
    assert "<img" not in page


def test_the_page_has_a_csp_without_unsafe_inline(client, alice, demo_app):
    client.force_login(alice)
    csp = client.get("/")["Content-Security-Policy"]
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "script-src 'self'" in csp


def test_every_static_asset_is_served_by_the_portal(client, alice, demo_app):
    import re

    client.force_login(alice)
    page = client.get("/").text
    urls = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page)
    assert urls and all(u.startswith("/static/") for u in urls)
    for url in urls:
        assert client.get(url).status_code == 200, url
