"""Model instances read by primary key through SQL written once, with the ORM's conversions.

`Model.objects.get(pk=...)` spends about 1 ms of CPU on this 2-core machine building and
compiling the query, twenty times what the database takes to answer it (bench/RESULTS.md). For
reads every request makes, PkLoader writes the statement once per database from the model's
metadata, and passes the row through the converters and Model.from_db() the ORM itself uses,
so the instance is the one `get()` would have built.
"""

from __future__ import annotations

from typing import Any

from django.db import connections, router
from django.db.models import Model


class PkLoader[M: Model]:
    def __init__(self, model: type[M]) -> None:
        self.model = model
        self._compiled: dict[str, tuple[str, list[str], list[tuple[int, Any, list]]]] = {}

    def _compile(self, using: str) -> tuple[str, list[str], list[tuple[int, Any, list]]]:
        connection = connections[using]
        meta = self.model._meta
        quote = connection.ops.quote_name
        fields = meta.concrete_fields
        sql = (
            f"SELECT {', '.join(quote(f.column) for f in fields)}"  # noqa: S608 - names
            f" FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s"
        )
        converters = []
        for index, field in enumerate(fields):
            col = field.get_col(meta.db_table)
            found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
            if found:
                converters.append((index, col, found))
        compiled = (sql, [f.attname for f in fields], converters)
        self._compiled[using] = compiled
        return compiled

    def get(self, pk: Any) -> M | None:
        """The row with primary key `pk` as a model instance, or None."""
        using = router.db_for_read(self.model)
        sql, names, converters = self._compiled.get(using) or self._compile(using)
        connection = connections[using]
        with connection.cursor() as cursor:
            cursor.execute(sql, [self.model._meta.pk.get_db_prep_value(pk, connection)])
            row = cursor.fetchone()
        if row is None:
            return None
        values = list(row)
        for index, col, found in converters:
            for convert in found:
                values[index] = convert(values[index], col, connection)
        return self.model.from_db(using, names, values)
