"""SESSION_ENGINE: Django's database sessions, read with one statement written once.

Every request that needs its user reads its session first; through the ORM that read cost
about 1 ms of CPU on this machine, five times the query (bench/RESULTS.md). Same table, same
data, same expiry rule as django.contrib.sessions.backends.db, whose SessionStore this is in
every other respect (writes, flush, cycle_key, async).
"""

from __future__ import annotations

from functools import cache

from django.contrib.sessions.backends import db
from django.contrib.sessions.models import Session
from django.db import connections, router
from django.utils import timezone


@cache
def _sql(using: str) -> str:
    quote = connections[using].ops.quote_name
    meta = Session._meta
    data, expires = (quote(meta.get_field(name).column) for name in ("session_data", "expire_date"))
    return (
        f"SELECT {data} FROM {quote(meta.db_table)}"  # noqa: S608 - names from the model
        f" WHERE {quote(meta.pk.column)} = %s AND {expires} > %s"
    )


class SessionStore(db.SessionStore):
    def _get_session_from_db(self) -> Session | None:
        using = router.db_for_read(self.model)
        connection = connections[using]
        now = connection.ops.adapt_datetimefield_value(timezone.now())
        with connection.cursor() as cursor:
            cursor.execute(_sql(using), [self.session_key, now])
            row = cursor.fetchone()
        if row is None:
            self._session_key = None  # as Django's: an unknown or expired key starts afresh
            return None
        return self.model(session_key=self.session_key, session_data=row[0])
