"""The real parts: Redis (the machine's, or an embedded one), a Celery worker process, an ASGI
server process and the FastGPT double over HTTP. Nothing of our own is patched out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from fastgpt_portal.lib.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    from django.db import connection

    s = connection.settings_dict
    if s["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{s['NAME']}"
    auth = s["USER"] or ""
    if s["PASSWORD"]:
        auth += f":{s['PASSWORD']}"
    return f"postgres://{auth}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


def _child_env(**extra: str) -> dict[str, str]:
    env = os.environ.copy()
    env["DATABASE_URL"] = _database_url()
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(predicate, timeout: float = 15.0, interval: float = 0.05, message: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(message or "condition not met in time")


def completions(fastgpt) -> list[dict]:
    """The chat completions requests the double received."""
    return [r for r in fastgpt.received if r["path"].endswith("/v1/chat/completions")]


def finished(pk: int):
    """The turn if it has finished, else None (for wait_until)."""
    from fastgpt_portal.chat.models import Turn

    turn = Turn.objects.get(pk=pk)
    return turn if turn.is_finished else None


def read_events(url: str, cookies: dict, headers: dict | None = None, limit: int = 10_000):
    """A turn's event stream as a browser reads it: until `done` or `limit` events."""
    events = []
    with httpx.stream("GET", url, cookies=cookies, headers=headers or {}, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = {"data": []}
        for line in response.iter_lines():
            if line == "":
                if event.get("event") or event["data"]:
                    events.append({**event, "data": "\n".join(event["data"])})
                    if event.get("event") == "done" or len(events) >= limit:
                        break
                event = {"data": []}
            elif line.startswith("data: "):
                event["data"].append(line[6:])
            elif line.startswith("event: "):
                event["event"] = line[7:]
            elif line.startswith("id: "):
                event["id"] = line[4:]
    return events


@pytest.fixture(scope="session")
def double():
    from fastgpt_portal.upstream.double import FastGPTDouble

    d = FastGPTDouble().start()
    yield d
    d.stop()


@pytest.fixture
def fastgpt(double):
    """The FastGPT double, fresh for each test."""
    double.reset()
    yield double
    double.reset()


def start_worker_process(
    log: Path, *, env: dict[str, str], queue: str | None = None, concurrency: int = 8
) -> subprocess.Popen:
    """A real Celery worker process (threads pool, as in production); `proc.name` for pings."""
    name = f"test-{uuid.uuid4().hex[:6]}@localhost"
    queues = ["-Q", queue] if queue else []
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "fastgpt_portal", "worker", "--pool", "threads",
             "--concurrency", str(concurrency), *queues, "-n", name, "--loglevel", "INFO",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    proc.name = name
    proc.log_path = log
    return proc


@pytest.fixture(scope="session")
def worker(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real Celery worker process on this session's queue."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = start_worker_process(log, env=_child_env())
    from fastgpt_portal.celery import app

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"the worker exited:\n{log.read_text()[-3000:]}")
        return app.control.ping(destination=[proc.name], timeout=0.5)

    wait_until(ready, timeout=30, interval=0.2, message="the Celery worker did not start")
    yield proc
    stop_process(proc)


def start_web_server(env: dict[str, str], log: Path, ready_path: str = "/accounts/login/"):
    """The portal under uvicorn (ASGI) as a process, once `ready_path` answers 200."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "fastgpt_portal.asgi:application", "--host",
             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"the web server exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url + ready_path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=30, interval=0.2, message="the web server did not start")
    proc.url = url
    proc.log_path = log
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def portal_server(django_db_setup, django_db_blocker, tmp_path_factory):
    """The portal under uvicorn (ASGI), as `make run` serves it."""
    proc = start_web_server(_child_env(), tmp_path_factory.mktemp("web") / "web.log")
    yield proc
    stop_process(proc)


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps calling out to the network this machine does not have.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright):
    """Debian's Chromium (never a downloaded browser), headless."""
    import shutil

    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        pytest.fail("Debian's chromium is needed for the browser tests: `make browser` installs it")
    return playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", "alice@example.org", "alice-pass-123")


@pytest.fixture
def bob(django_user_model):
    return django_user_model.objects.create_user("bob", "bob@example.org", "bob-pass-123")


@pytest.fixture
def demo_app(fastgpt):
    from fastgpt_portal.upstream.double import DOUBLE_APP_KEY
    from fastgpt_portal.upstream.models import App

    return App.objects.create(name="Helpdesk", base_url=fastgpt.url, api_key=DOUBLE_APP_KEY)


def session_cookie(user) -> dict[str, str]:
    """A real session for `user`, for clients of the server processes."""
    from django.conf import settings
    from django.test import Client

    client = Client()
    client.force_login(user)
    return {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}


@pytest.fixture(scope="session", autouse=True)
def _close_connection_pools(django_db_setup, django_db_blocker):
    """With PostgreSQL's connection pool (settings.py) this process keeps a connection open,
    which would stop the test database from being dropped at the end."""
    yield
    from django.db import connection, connections

    for conn in connections.all():
        if hasattr(conn, "close_pool"):
            conn.close_pool()
    if connection.vendor == "postgresql":
        # Backends of the worker and web processes that just exited linger for a moment.
        def others() -> int:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                return cursor.fetchone()[0]

        with django_db_blocker.unblock():
            deadline = time.monotonic() + 5
            while others() and time.monotonic() < deadline:
                time.sleep(0.1)
            if others():
                # A thread of this process (asgiref's executor, from in-process ASGI tests)
                # may still hold a connection it will never close: end it, it is the test
                # database.
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
            connection.close()
