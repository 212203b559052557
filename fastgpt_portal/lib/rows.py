"""Reads and inserts of single rows through SQL written once, with the ORM's own conversions.

`Model.objects.get(pk=...)` spends about 1 ms of CPU on this 2-core machine building and
compiling the query, twenty times what the database takes to answer it, and `save()` of a new
row about 0.5 ms (bench/RESULTS.md). For the reads and inserts every request or every question
makes, the statement is written once per model and database from the model's metadata; values
go through the same converters, Model.from_db(), pre_save() and get_db_prep_save() the ORM
uses, so the instances and rows are the ones the ORM would have made.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, router
from django.db.models import NOT_PROVIDED, Model, signals


class RowLoader[M: Model]:
    """`model.objects.filter(<field>=value).first()` for a unique field (the primary key by
    default); `only` loads just those fields and `defer` all but those, the others deferred as
    with QuerySet.only() and defer()."""

    def __init__(
        self,
        model: type[M],
        field: str = "pk",
        *,
        only: tuple[str, ...] = (),
        defer: tuple[str, ...] = (),
    ) -> None:
        self.model = model
        meta = model._meta
        self.field = meta.pk if field == "pk" else meta.get_field(field)
        if not (self.field.primary_key or self.field.unique):
            raise ValueError(f"{model.__name__}.{field} is not unique")
        wanted = {meta.get_field(name).attname for name in only} | {meta.pk.attname}
        deferred = {meta.get_field(name).attname for name in defer} - {meta.pk.attname}
        self.fields = [
            f
            for f in meta.concrete_fields
            if (not only or f.attname in wanted) and f.attname not in deferred
        ]
        self._compiled: dict[str, tuple[str, list[tuple[int, Any, list]]]] = {}

    def _compile(self, using: str) -> tuple[str, list[tuple[int, Any, list]]]:
        connection = connections[using]
        table = self.model._meta.db_table
        quote = connection.ops.quote_name
        sql = (
            f"SELECT {', '.join(quote(f.column) for f in self.fields)}"  # noqa: S608 - names
            f" FROM {quote(table)} WHERE {quote(self.field.column)} = %s"
        )
        converters = []
        for index, field in enumerate(self.fields):
            col = field.get_col(table)
            found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if found:
                converters.append((index, col, found))
        self._compiled[using] = (sql, converters)
        return sql, converters

    def get(self, value: Any) -> M | None:
        """The row whose field equals `value`, as a model instance, or None."""
        using = router.db_for_read(self.model)
        sql, converters = self._compiled.get(using) or self._compile(using)
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.field.get_db_prep_value(value, connection)])
            row = cursor.fetchone()
        if row is None:
            return None
        values = list(row)
        for index, col, found in converters:
            for convert in found:
                values[index] = convert(values[index], col, connection)
        return self.model.from_db(using, [f.attname for f in self.fields], values)


_INSERTS: dict[tuple[type[Model], str], tuple[str, list] | None] = {}
_LINKED_INSERTS: dict[tuple[type[Model], str, str], tuple[str, list]] = {}
_TOUCHES: dict[tuple[type[Model], str], tuple[str, list] | None] = {}


def _plain(model: type[Model]) -> bool:
    meta = model._meta
    return (
        not meta.parents
        and model.save is Model.save
        and not any(f.generated or f.db_default is not NOT_PROVIDED for f in meta.concrete_fields)
    )


def _insertable(obj: Model, using: str) -> bool:
    model = type(obj)
    key = (model, using)
    if key not in _INSERTS:
        _INSERTS[key] = _compile_insert(model, using) if _plain(model) else None
    return (
        _INSERTS[key] is not None
        and obj.pk is None
        and not signals.pre_save.has_listeners(model)
        and not signals.post_save.has_listeners(model)
    )


def insert(obj: Model) -> None:
    """Store a new instance as `obj.save()` would, with the INSERT written once per model.

    A model with parents, its own save(), generated or database-default fields, or pre_save or
    post_save receivers is simply saved: this covers only what save() would do for a plain one.
    """
    model = type(obj)
    using = router.db_for_write(model)
    if not _insertable(obj, using):
        obj.save(force_insert=True, using=using)
        return
    sql, fields = _INSERTS[(model, using)]
    connection = connections[using]
    values = [f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        obj.pk = cursor.fetchone()[0]
    obj._state.adding = False
    obj._state.db = using


def _compile_insert(model: type[Model], using: str, link: str | None = None) -> tuple[str, list]:
    """The INSERT of one row; with `link`, that foreign key's value is the id the statement's
    `head` (insert_linked) returns, and the statement returns it too."""
    meta = model._meta
    quote = connections[using].ops.quote_name
    linked = meta.get_field(link) if link else None
    fields = [f for f in meta.local_concrete_fields if f is not meta.auto_field]
    sql = (
        f"INSERT INTO {quote(meta.db_table)}"  # noqa: S608 - names from the model
        f" ({', '.join(quote(f.column) for f in fields)})"
        f" VALUES ({', '.join('(SELECT * FROM head)' if f is linked else '%s' for f in fields)})"
        f" RETURNING {quote(meta.pk.column)}" + (f", {quote(linked.column)}" if linked else "")
    )
    return sql, fields


def _compile_touch(model: type[Model], using: str) -> tuple[str, list] | None:
    """The UPDATE that sets a row's auto_now fields and returns its id; None without any."""
    meta = model._meta
    stamped = [f for f in meta.concrete_fields if getattr(f, "auto_now", False)]
    if not stamped:
        return None
    quote = connections[using].ops.quote_name
    sql = (
        f"UPDATE {quote(meta.db_table)}"  # noqa: S608 - names from the model
        f" SET {', '.join(f'{quote(f.column)} = %s' for f in stamped)}"
        f" WHERE {quote(meta.pk.column)} = %s RETURNING {quote(meta.pk.column)}"
    )
    return sql, stamped


def insert_linked(
    obj: Model, link: str, *, parent: Model | None = None, touch: Model | None = None
) -> bool:
    """Insert `obj` and, in the same statement, write the row its foreign key `link` points at.

    That row is either `parent`, a new instance, inserted as insert() would, or `touch`, a
    stored instance whose auto_now fields (a conversation's `updated`) are set to now.
    One data-modifying WITH: in autocommit mode the two rows are one transaction, without the
    BEGIN and COMMIT round trips of an atomic block (a sent question's path, bench/RESULTS.md).

    Returns False, with nothing written, where this does not apply: not PostgreSQL, or either
    model is not plain as insert() requires. A `touch` that matches no row fails the insert
    (IntegrityError), as inserting the row alone would.
    """
    if (parent is None) == (touch is None):
        raise TypeError("insert_linked() takes a parent or a row to touch")
    model = type(obj)
    using = router.db_for_write(model)
    connection = connections[using]
    if connection.vendor != "postgresql" or not _insertable(obj, using):
        return False
    field = model._meta.get_field(link)
    head_params: list[Any]
    if parent is not None:
        if router.db_for_write(type(parent)) != using or not _insertable(parent, using):
            return False
        head, parent_fields = _INSERTS[(type(parent), using)]
        head_params = [
            f.get_db_prep_save(f.pre_save(parent, True), connection) for f in parent_fields
        ]
    else:
        if router.db_for_write(type(touch)) != using:
            return False
        key = (type(touch), using)
        if key not in _TOUCHES:
            _TOUCHES[key] = _compile_touch(type(touch), using)
        if _TOUCHES[key] is None:
            return False
        head, stamped = _TOUCHES[key]
        # Set on the instance too, as save() would.
        head_params = [f.get_db_prep_save(f.pre_save(touch, False), connection) for f in stamped]
        head_params.append(touch.pk)
    key = (model, using, link)
    if key not in _LINKED_INSERTS:
        _LINKED_INSERTS[key] = _compile_insert(model, using, link)
    sql, fields = _LINKED_INSERTS[key]
    values = [
        f.get_db_prep_save(f.pre_save(obj, True), connection) for f in fields if f is not field
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"WITH head AS ({head}) {sql}", [*head_params, *values])
        obj.pk, linked = cursor.fetchone()
    setattr(obj, field.attname, linked)
    obj._state.adding = False
    obj._state.db = using
    if parent is not None:
        parent.pk = linked
        parent._state.adding = False
        parent._state.db = using
    return True
