"""Connection-pool health checks that cost a round trip only for connections idle a while.

Django checks every pooled connection as it is handed out (CONN_HEALTH_CHECKS): one extra
round trip to PostgreSQL per request, and per query burst in the worker. A connection handed
out moments ago is as healthy as it was then, so only one last handed out more than
CHECK_AFTER_IDLE seconds ago is checked; psycopg_pool already drops a connection that comes
back broken. (Requests hold a connection for milliseconds, so this is its idle time. Timing
the return instead needs a `reset` callback, and with one psycopg_pool hands every returned
connection to its worker thread: a thread wake per request and per turn, on the first
token's path, bench/RESULTS.md.)
"""

from __future__ import annotations

import time
import weakref
from typing import Any

CHECK_AFTER_IDLE = 5.0

_handed_out_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def check(conn: Any) -> None:
    """psycopg_pool `check`: raise if a connection unused for a while no longer answers."""
    from psycopg_pool import ConnectionPool

    now = time.monotonic()
    last = _handed_out_at.get(conn)
    _handed_out_at[conn] = now
    if last is None or now - last > CHECK_AFTER_IDLE:
        ConnectionPool.check_connection(conn)
