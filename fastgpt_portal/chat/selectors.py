"""Per-user reads. Every query for user data starts here and takes the user."""

from __future__ import annotations

from django.db.models import QuerySet
from django.shortcuts import get_object_or_404

from fastgpt_portal.accounts.models import User
from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib.rows import RowLoader
from fastgpt_portal.upstream.models import App


def conversation_list_for_user(*, user: User, query: str = "") -> QuerySet[Conversation]:
    qs = Conversation.objects.filter(user=user, deleted_at=None).select_related("app")
    if query:
        qs = qs.filter(title__icontains=query)
    return qs.order_by("-updated", "-pk")


def conversation_get_for_user(*, user: User, pk: int) -> Conversation:
    return get_object_or_404(
        Conversation.objects.select_related("app"), pk=pk, user=user, deleted_at=None
    )


def turn_list_for_conversation(*, conversation: Conversation) -> QuerySet[Turn]:
    return conversation.turns.order_by("pk")


def turn_get_for_user(*, user: User, pk: int) -> Turn:
    return get_object_or_404(
        Turn.objects.select_related("conversation__app"),
        pk=pk,
        user=user,
        conversation__deleted_at=None,
    )


def turn_get_for_user_or_none(*, user: User, pk: int) -> Turn | None:
    return Turn.objects.filter(pk=pk, user=user, conversation__deleted_at=None).first()


def app_list_for_user(*, user: User) -> QuerySet[App]:
    # Every enabled app, for now; per-group app access would narrow this one place.
    return App.objects.enabled()


# Every question that starts a conversation reads its app: one statement written once, and
# only what the page shows (no key to decrypt).
_apps_by_slug = RowLoader(App, "slug", only=("name", "slug", "enabled"))


def app_get_for_user(*, user: User, slug: str) -> App | None:
    """app_list_for_user(user=user).filter(slug=slug).first(), read without the ORM's cost;
    narrow it with app_list_for_user."""
    app = _apps_by_slug.get(slug)
    return app if app is not None and app.enabled else None
