"""Connection-pool health checks that cost a round trip only for connections idle a while.

Django checks every pooled connection as it is handed out (CONN_HEALTH_CHECKS): one extra
round trip to PostgreSQL per request, and per query burst in the worker. A connection given
back to the pool moments ago is as healthy as it was then, so only one idle for longer than
CHECK_AFTER_IDLE seconds is checked; psycopg_pool already drops a connection that comes back
broken.
"""

from __future__ import annotations

import time
import weakref
from typing import Any

CHECK_AFTER_IDLE = 5.0

_returned_at: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def check(conn: Any) -> None:
    """psycopg_pool `check`: raise if a connection idle for a while no longer answers."""
    from psycopg_pool import ConnectionPool

    returned = _returned_at.get(conn)
    if returned is None or time.monotonic() - returned > CHECK_AFTER_IDLE:
        ConnectionPool.check_connection(conn)


def reset(conn: Any) -> None:
    """psycopg_pool `reset`, run as a connection goes back to the pool: note when."""
    _returned_at[conn] = time.monotonic()
