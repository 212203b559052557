from __future__ import annotations

import json
import logging

from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
)
from django.shortcuts import redirect, render
from django.utils.html import escape
from django.views.decorators.http import require_GET, require_POST
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect, push_url, retarget

from fastgpt_portal.chat import selectors, services
from fastgpt_portal.chat.forms import MessageForm
from fastgpt_portal.chat.models import Conversation, Turn

log = logging.getLogger("fastgpt_portal.chat")

SIDEBAR_SIZE = 30
HISTORY_PAGE_SIZE = 50


def _chat_context(request: HttpRequest, conversation: Conversation | None) -> dict:
    apps = list(selectors.app_list_for_user(user=request.user))
    selected = conversation.app if conversation else None
    if selected is None:
        slug = request.GET.get("app")
        selected = next((a for a in apps if a.slug == slug), apps[0] if apps else None)
    turns = (
        list(selectors.turn_list_for_conversation(conversation=conversation))
        if conversation
        else []
    )
    return {
        "apps": apps,
        "selected_app": selected,
        "conversation": conversation,
        "turns": turns,
        "conversations": selectors.conversation_list_for_user(user=request.user)[:SIDEBAR_SIZE],
        "form": MessageForm(),
    }


@login_required
@require_GET
def chat_home(request: HttpRequest) -> HttpResponse:
    return render(request, "chat/chat.html", _chat_context(request, None))


@login_required
@require_GET
@vary_on_headers("HX-Request")
def conversation_page(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, pk=pk)
    return render(request, "chat/chat.html", _chat_context(request, conversation))


@login_required
@require_POST
def send(request: HttpRequest) -> HttpResponse:
    data = request.POST.copy()
    if data.get("input_form"):
        # A FastGPT form node (userInput) takes its reply as a JSON string (§3.5).
        fields = {k.removeprefix("field:"): v for k, v in data.items() if k.startswith("field:")}
        data["text"] = json.dumps(fields, ensure_ascii=False)
    form = MessageForm(data)
    conversation = None
    error = None
    if not form.is_valid():
        error = "; ".join(e for errs in form.errors.values() for e in errs)
    else:
        if form.cleaned_data["conversation"]:
            conversation = selectors.conversation_get_for_user(
                user=request.user, pk=form.cleaned_data["conversation"]
            )
        app = None
        if conversation is None:
            slug = form.cleaned_data["app"]
            if slug:
                app = selectors.app_get_for_user(user=request.user, slug=slug)
            else:
                app = selectors.app_list_for_user(user=request.user).first()
        try:
            turn = services.turn_submit(
                user=request.user,
                text=form.cleaned_data["text"],
                app=app,
                conversation=conversation,
            )
        except ValidationError as exc:
            error = " ".join(exc.messages)
    if error:
        return _composer_error(request, error)

    new_conversation = conversation is None
    url = turn.conversation.get_absolute_url()
    if not request.htmx:
        return redirect(url)
    context = {
        "turn": turn,
        "conversation": turn.conversation,
        "new_conversation": new_conversation,
        "quota_summary": turn.quota_summary,
    }
    response = render(request, "chat/chat.html#sent", context)
    if new_conversation:
        push_url(response, url)
    return response


@login_required
@require_POST
def turn_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    turn = selectors.turn_get_for_user(user=request.user, pk=pk)
    turn = services.turn_cancel(turn=turn)
    return _turn_response(request, turn)


@login_required
@require_POST
def turn_retry(request: HttpRequest, pk: int) -> HttpResponse:
    turn = selectors.turn_get_for_user(user=request.user, pk=pk)
    try:
        turn = services.turn_retry(turn=turn)
    except ValidationError as exc:
        return _composer_error(request, " ".join(exc.messages))
    return _turn_response(request, turn)


def _composer_error(request: HttpRequest, error: str) -> HttpResponse:
    """A refusal the user must see: in the message box's alert region (htmx), or plain 400."""
    if not request.htmx:
        return HttpResponseBadRequest(escape(error))
    response = render(request, "chat/chat.html#composer-error", {"error": error}, status=422)
    return retarget(response, "#composer-error")


def _turn_response(request: HttpRequest, turn: Turn) -> HttpResponse:
    if request.htmx:
        return render(request, "chat/chat.html#turn", {"turn": turn})
    return redirect(turn.conversation.get_absolute_url())


@login_required
@require_GET
@vary_on_headers("HX-Request")
def turn_detail(request: HttpRequest, pk: int) -> HttpResponse:
    turn = selectors.turn_get_for_user(user=request.user, pk=pk)
    if request.htmx:
        return render(request, "chat/chat.html#turn", {"turn": turn})
    return redirect(turn.conversation.get_absolute_url())


@login_required
@require_GET
@vary_on_headers("HX-Request")
def history(request: HttpRequest) -> HttpResponse:
    query = request.GET.get("q", "").strip()[:200]
    conversations = selectors.conversation_list_for_user(user=request.user, query=query)
    # Pages, not one long table: a user with thousands of conversations got a 500-row page.
    page = Paginator(conversations, HISTORY_PAGE_SIZE).get_page(request.GET.get("page"))
    template = "chat/history.html"
    if request.htmx and request.headers.get("HX-Target") == "history-list":
        template += "#history-list"
    elif request.htmx and request.headers.get("HX-Target") == "history-more":
        template += "#history-rows"
    return render(request, template, {"page": page, "query": query})


@login_required
@require_POST
def conversation_delete(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, pk=pk)
    services.conversation_delete(conversation=conversation)
    if request.htmx:
        if request.headers.get("HX-Target", "").startswith("conversation-row"):
            return HttpResponse("")
        return HttpResponseClientRedirect("/")
    return redirect("chat:history")


@login_required
@require_POST
def conversation_rename(request: HttpRequest, pk: int) -> HttpResponse:
    conversation = selectors.conversation_get_for_user(user=request.user, pk=pk)
    title = request.POST.get("title", "")
    try:
        services.conversation_rename(conversation=conversation, title=title)
    except ValidationError as exc:
        return HttpResponseBadRequest(escape(" ".join(exc.messages)))
    return redirect(conversation.get_absolute_url())
