"""`make run` as a new user runs it: it sets up, serves, answers, and Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from fastgpt_portal.lib.embedded_redis import free_port
from tests.conftest import ROOT, wait_until


@pytest.fixture
def runner(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        PORT=str(port),
        DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}",
        PORTAL_ADMIN_PASSWORD_FILE=str(tmp_path / "admin-password"),
        PORTAL_QUEUE=f"make-run-{port}",
        DEMO_TOKEN_RATE="200",
    )
    for name in ("FASTGPT_BASE_URL", "FASTGPT_API_KEY"):
        env.pop(name, None)
    log = tmp_path / "run.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fastgpt_portal.lib.devserver"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    proc.url = f"http://127.0.0.1:{port}"
    proc.log = log
    proc.password_file = tmp_path / "admin-password"
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def test_make_run_serves_a_working_portal_and_ctrl_c_stops_everything(runner):
    wait_until(
        lambda: "The portal is running" in runner.log.read_text() or runner.poll() is not None,
        timeout=90,
        interval=0.5,
    )
    output = runner.log.read_text()
    assert runner.poll() is None, output[-3000:]
    username, password = re.search(r"username: (\S+)\n\s+password: (\S+)", output).groups()
    assert runner.password_file.read_text().split() == [username, password]
    assert "built-in FastGPT double" in output

    probes: list[str] = []

    def healthy() -> bool:
        # Record every answer so a failure says what /healthz said, not just "not JSON".
        try:
            response = httpx.get(runner.url + "/healthz", timeout=5)
        except httpx.HTTPError as exc:
            probes.append(repr(exc))
            return False
        probes.append(f"{response.status_code} {response.text[:300]}")
        return response.headers.get("content-type") == "application/json" and response.json()["ok"]

    try:
        wait_until(healthy, timeout=30, interval=0.5)
    except AssertionError:
        raise AssertionError(f"/healthz never ok: {probes[-3:]}\n{runner.log.read_text()[-3000:]}")
    with httpx.Client(base_url=runner.url, timeout=10) as browser:
        login = browser.get("/accounts/login/")
        csrf = browser.cookies["csrftoken"]
        browser.post(
            "/accounts/login/",
            data={"username": username, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": runner.url + "/accounts/login/"},
        )
        assert login.status_code == 200
        page = browser.get("/")
        assert "Demo upstream" in page.text, "the demo upstream is labelled"
        csrf = browser.cookies["csrftoken"]
        sent = browser.post(
            "/chat/send",
            data={"text": "Hello from make run", "app": "demo"},
            headers={"X-CSRFToken": csrf, "HX-Request": "true"},
        )
        assert sent.status_code == 200, sent.text
        turn_id = re.search(r'id="turn-(\d+)"', sent.text).group(1)
        with browser.stream("GET", f"/chat/turns/{turn_id}/events") as events:
            body = ""
            for chunk in events.iter_text():
                body += chunk
                if "event: done" in body:
                    break
        assert "event: delta" in body and "Hello from make run" in body

    children = psutil.Process(runner.pid).children(recursive=True)
    assert len(children) >= 5, "double, Redis, worker, beat and the web server"
    os.killpg(runner.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    assert runner.wait(30) == 0
    time.sleep(1)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]


def test_make_run_refuses_a_port_in_use_and_says_so(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        env.update(PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'portal.sqlite3'}")
        result = subprocess.run(
            [sys.executable, "-m", "fastgpt_portal.lib.devserver"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"Port {port} is already in use" in result.stdout
    assert not (tmp_path / "portal.sqlite3").exists(), "nothing was set up"


def _postgres_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _postgres_reachable(), reason="needs a PostgreSQL on 127.0.0.1:5432")
def test_make_run_names_a_missing_database_at_once(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        PORT=str(free_port()),
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/no_such_portal_database",
    )
    result = subprocess.run(
        [sys.executable, "-m", "fastgpt_portal.lib.devserver"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    # Said in words, not the pool's "couldn't get a connection after 30.00 sec".
    assert 'database "no_such_portal_database" does not exist' in result.stdout
    assert "unset DATABASE_URL to use SQLite" in result.stdout
