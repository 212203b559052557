"""Loaded with `-p tests.bootstrap` (pyproject addopts), before pytest-django reads the settings.

Tests run in DEBUG with a Celery queue of their own, so they can share a Redis with a running
portal, and with a short checkpoint interval. Without REDIS_URL an embedded Redis is started.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid

os.environ.setdefault("DEBUG", "true")
_run = uuid.uuid4().hex[:8]
os.environ["PORTAL_QUEUE"] = f"portal-test-{_run}"
# A SQLite test database of this run's own, so two runs on one machine never share one.
os.environ.setdefault("PORTAL_TEST_DB_NAME", f"{tempfile.gettempdir()}/portal-test-{_run}.sqlite3")
os.environ.setdefault("PORTAL_CHECKPOINT_SECONDS", "0.2")
# Short backoff so the fault tests retry in milliseconds, not seconds.
os.environ.setdefault("PORTAL_RETRY_BASE_SECONDS", "0.05")
if not os.environ.get("REDIS_URL"):
    from fastgpt_portal.lib.embedded_redis import EmbeddedRedis

    _embedded = EmbeddedRedis().start()
    atexit.register(_embedded.stop)
    os.environ["REDIS_URL"] = _embedded.url
