"""lib.rows: single-row reads and inserts through SQL written once make what the ORM makes."""

from __future__ import annotations

import pytest
from django.db.models.signals import post_save

from fastgpt_portal.chat.models import Conversation, Turn
from fastgpt_portal.lib import rows
from fastgpt_portal.upstream.models import App

pytestmark = pytest.mark.django_db

KEY = "fastgpt-rows-test-key-0123456789"


@pytest.fixture
def app():
    return App.objects.create(name="Helpdesk", base_url="http://127.0.0.1:9/api", api_key=KEY)


def values(obj, names=None) -> dict:
    names = names or [f.attname for f in type(obj)._meta.concrete_fields]
    return {name: getattr(obj, name) for name in names}


def test_a_read_by_a_unique_field_is_the_orms_row(app):
    by_slug = rows.RowLoader(App, "slug")
    loaded = by_slug.get(app.slug)
    assert values(loaded) == values(App.objects.get(pk=app.pk))
    assert loaded.api_key == KEY, "decrypted by the field's own from_db_value"
    assert by_slug.get("no-such-app") is None
    with pytest.raises(ValueError):
        rows.RowLoader(App, "name")  # not unique: a loader would pick a row at random


def test_only_loads_those_fields_and_defers_the_rest(app, django_assert_num_queries):
    loader = rows.RowLoader(App, "slug", only=("name",))
    with django_assert_num_queries(1):
        loaded = loader.get(app.slug)
        assert (loaded.pk, loaded.name) == (app.pk, "Helpdesk")
    assert loaded.get_deferred_fields() >= {"api_key", "base_url"}
    assert loaded.api_key == KEY, "a deferred field loads when asked for"


def test_an_insert_stores_the_row_create_would(alice, app):
    made = Conversation(user=alice, app=app, title="Rows")
    rows.insert(made)
    turn = Turn(conversation=made, user=alice, question="Who am I?")
    rows.insert(turn)

    expected = Conversation.objects.create(user=alice, app=app, title="Rows")
    stored = Conversation.objects.get(pk=made.pk)
    skip = {"id", "chat_id", "created", "updated"}  # per row by nature
    assert {k: v for k, v in values(stored).items() if k not in skip} == {
        k: v for k, v in values(expected).items() if k not in skip
    }
    assert stored.created == made.created and stored.updated == made.updated, "auto_now set"
    assert stored.chat_id == made.chat_id and stored.chat_id.startswith("portal-")
    assert not made._state.adding and made._state.db == "default"
    stored_turn = Turn.objects.get(pk=turn.pk)
    assert (stored_turn.status, stored_turn.question, stored_turn.data_id) == (
        "queued",
        "Who am I?",
        turn.data_id,
    )
    assert stored_turn.queued_at == turn.queued_at


def test_a_model_with_receivers_or_its_own_save_is_simply_saved(alice, app):
    seen = []

    def receiver(sender, instance, created, **kwargs):
        seen.append((instance.pk, created))

    post_save.connect(receiver, sender=Conversation)
    try:
        made = Conversation(user=alice, app=app, title="Signalled")
        rows.insert(made)
    finally:
        post_save.disconnect(receiver, sender=Conversation)
    assert seen == [(made.pk, True)]

    other = App(name="Second", base_url="http://127.0.0.1:9/api", api_key=KEY)
    rows.insert(other)  # App.save() makes the slug
    assert App.objects.get(pk=other.pk).slug == "second"


def test_defer_loads_all_but_those_fields(alice, app):
    conversation = Conversation.objects.create(user=alice, app=app)
    turn = Turn.objects.create(
        conversation=conversation, user=alice, question="Q", flow_responses=[{"a": 1}]
    )
    loaded = rows.RowLoader(Turn, defer=("flow_responses",)).get(turn.pk)
    assert loaded.get_deferred_fields() == {"flow_responses"}
    expected = Turn.objects.get(pk=turn.pk)
    names = [f.attname for f in Turn._meta.concrete_fields if f.name != "flow_responses"]
    assert values(loaded, names) == values(expected, names)


def test_a_linked_insert_writes_both_rows_in_one_statement(alice, app, django_assert_num_queries):
    from django.db import connection

    made = Conversation(user=alice, app=app, title="Linked")
    turn = Turn(conversation=made, user=alice, question="One trip?")
    with django_assert_num_queries(1 if connection.vendor == "postgresql" else 0):
        linked = rows.insert_linked(turn, "conversation", parent=made)
    if connection.vendor != "postgresql":
        assert linked is False and made.pk is None and turn.pk is None, "nothing written"
        return
    assert linked and made.pk and turn.pk
    assert (turn.conversation_id, turn.conversation) == (made.pk, made)
    stored = Conversation.objects.get(pk=made.pk)
    assert (stored.title, stored.chat_id, stored.created) == ("Linked", made.chat_id, made.created)
    stored_turn = Turn.objects.get(pk=turn.pk)
    assert (stored_turn.conversation_id, stored_turn.question, stored_turn.data_id) == (
        made.pk,
        "One trip?",
        turn.data_id,
    )
    assert not made._state.adding and not turn._state.adding


def test_a_linked_insert_touches_an_existing_row(alice, app, django_assert_num_queries):
    from django.db import IntegrityError, connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("one statement needs PostgreSQL's data-modifying WITH")
    made = Conversation.objects.create(user=alice, app=app, title="Touched")
    before = made.updated
    turn = Turn(conversation=made, user=alice, question="Again")
    with django_assert_num_queries(1):
        assert rows.insert_linked(turn, "conversation", touch=made)
    assert made.updated > before, "the instance's auto_now field, as save() would set it"
    assert Conversation.objects.get(pk=made.pk).updated == made.updated
    assert Turn.objects.get(pk=turn.pk).conversation_id == made.pk

    gone = Conversation.objects.create(user=alice, app=app, title="Gone")
    Conversation.objects.filter(pk=gone.pk).delete()
    orphan = Turn(conversation=gone, user=alice, question="Lost?")
    with pytest.raises(IntegrityError), transaction.atomic():
        rows.insert_linked(orphan, "conversation", touch=gone)
    assert not Turn.objects.filter(question="Lost?").exists()
