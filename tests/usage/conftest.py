"""Helpers for the quota tests: turns with a chosen time, status and cost."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

# A fixed "now" for the service tests, so day and month boundaries never depend on the clock.
NOW = datetime(2026, 11, 30, 15, 30, tzinfo=UTC)


@pytest.fixture
def app(db):
    """An app that is never called: these tests stop before anything reaches FastGPT."""
    from fastgpt_portal.upstream.models import App

    return App.objects.create(name="Quota test app", base_url="http://127.0.0.1:9", api_key="k")


@pytest.fixture
def make_turns(app):
    """make_turns(user, n, at=NOW, status="done", points=0.0): n turns queued at `at`."""
    from fastgpt_portal.chat.models import Conversation, Turn

    def make(user, n=1, *, at=NOW, status="done", points=0.0, conversation=None):
        conversation = conversation or Conversation.objects.create(user=user, app=app)
        turns = [
            Turn.objects.create(
                conversation=conversation, user=user, question="q", status=status, points=points
            )
            for _ in range(n)
        ]
        # queued_at is auto_now_add, so it can only be moved after the insert.
        Turn.objects.filter(pk__in=[t.pk for t in turns]).update(queued_at=at)
        return turns

    return make


@pytest.fixture
def group_of(db):
    """group_of(name, *users): a django.contrib.auth Group with these members."""
    from django.contrib.auth.models import Group

    def make(name, *users):
        group = Group.objects.create(name=name)
        group.user_set.add(*users)
        return group

    return make
