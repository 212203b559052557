"""lib.dbpool: a pooled connection costs a health-check round trip only when it has not been
handed out for a while, and nothing runs when it goes back (no `reset` callback, which would
hand every returned connection to psycopg_pool's worker thread)."""

from __future__ import annotations

from django.conf import settings
from psycopg_pool import ConnectionPool

from fastgpt_portal.lib import dbpool


class Conn:
    """Stands in for a psycopg connection: check() only needs something to weakly refer to."""


def test_a_connection_is_checked_only_when_unused_for_a_while(monkeypatch):
    checked: list[Conn] = []
    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(checked.append))
    conn = Conn()

    dbpool.check(conn)
    dbpool.check(conn)
    assert checked == [conn], "checked when first handed out, not again moments later"

    dbpool._handed_out_at[conn] -= dbpool.CHECK_AFTER_IDLE + 1
    dbpool.check(conn)
    assert checked == [conn, conn], "checked again after CHECK_AFTER_IDLE unused"


def test_connections_go_back_to_the_pool_without_a_reset_callback():
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if pool:
        assert pool["check"] is dbpool.check
        assert "reset" not in pool
