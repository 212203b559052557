"""The real stack for benchmarks: Redis, the database, FastGPT doubles, a Celery worker and the
ASGI web server, each its own process, configured as in production (DEBUG off).

Redis is REDIS_URL if set, else an embedded one; the database is DATABASE_URL if set, else a
SQLite file in a temporary folder. The stack gets a Celery queue of its own, so it can share a
Redis with a running portal or a test run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fastgpt_portal.lib.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BENCH_SECRET = "bench-only-secret-key-" + "x" * 32  # a local benchmark stack, never deployed


@dataclass
class StackConfig:
    """How the portal's processes are run; the defaults are the tuned production choices."""

    web_workers: int = 1
    worker_pool: str = "threads"
    worker_concurrency: int = 1200
    worker_processes: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Double:
    name: str
    url: str
    port: int
    proc: subprocess.Popen

    def control(self, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method="POST" if data is not None else "GET",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as response:
            return json.loads(response.read())

    def received(self) -> list[dict]:
        return [
            r for r in self.control("/__double__/received") if r["path"].endswith("/completions")
        ]

    def chats(self) -> dict[str, dict]:
        return self.control("/__double__/chats")

    def reset(self) -> None:
        self.control("/__double__/reset", {})


def wait_for_port(port: int, proc: subprocess.Popen, name: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} is not listening on {port}")


class Stack:
    """Start with start(), stop with stop(); `env` is what every child process sees."""

    def __init__(self, config: StackConfig | None = None) -> None:
        self.config = config or StackConfig()
        self.tmp = Path(tempfile.mkdtemp(prefix="portal-bench-"))
        self.redis: EmbeddedRedis | None = None
        self.children: list[subprocess.Popen] = []
        self.doubles: dict[str, Double] = {}
        self.web_url = ""
        self.web_port = 0
        self.web: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.env = self._environment()

    # ------------------------------------------------------------------ setup

    def _environment(self) -> dict[str, str]:
        env = os.environ.copy()
        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"] = f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        key = base64.urlsafe_b64encode(hashlib.sha256(BENCH_SECRET.encode()).digest()).decode()
        env.update(
            {
                "DEBUG": "false",
                "SECRET_KEY": BENCH_SECRET,
                "FIELD_ENCRYPTION_KEY": key,
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SECURE_SSL_REDIRECT": "false",
                "SESSION_COOKIE_SECURE": "false",
                "CSRF_COOKIE_SECURE": "false",
                "SECURE_HSTS_SECONDS": "0",
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                "PORTAL_QUEUE": f"bench-{uuid.uuid4().hex[:8]}",
            }
        )
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.update(self.config.extra_env)
        return env

    @property
    def database(self) -> str:
        url = self.env["DATABASE_URL"]
        return "PostgreSQL" if url.startswith(("postgres", "postgresql")) else "SQLite"

    def _log(self, name: str):
        return open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        with self._log(name) as out:
            proc = subprocess.Popen(
                args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        proc.bench_name = name  # type: ignore[attr-defined]
        self.children.append(proc)
        return proc

    def log_tail(self, name: str, size: int = 3000) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-size:] if path.exists() else ""

    def start(self) -> Stack:
        if not self.env.get("REDIS_URL"):
            self.redis = EmbeddedRedis().start()
            self.env["REDIS_URL"] = self.redis.url
        os.environ.update({k: v for k, v in self.env.items() if k != "PYTHONPATH"})
        from fastgpt_portal.lib.devserver import database_problem

        if problem := database_problem(self.env["DATABASE_URL"]):
            raise SystemExit(problem)
        subprocess.run(
            [PY, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=self.env, check=True
        )
        # DEBUG is off, as in production: pages need the collected, hashed static files.
        subprocess.run(
            [PY, "manage.py", "collectstatic", "--noinput", "-v", "0"],
            cwd=ROOT, env=self.env, check=True,
        )  # fmt: skip
        import django

        django.setup()
        return self

    def start_double(
        self,
        name: str,
        *,
        token_rate: float = 0.0,
        tokens: int | None = None,
        first_token_delay: float = 0.0,
    ) -> Double:
        port = free_port()
        args = [PY, "manage.py", "fastgpt_double", "--port", str(port), "--record-writes"]
        args += ["--token-rate", str(token_rate), "--first-token-delay", str(first_token_delay)]
        if tokens is not None:
            args += ["--tokens", str(tokens)]
        proc = self._spawn(f"double-{name}", args)
        wait_for_port(port, proc, f"the {name} double")
        double = Double(name=name, url=f"http://127.0.0.1:{port}", port=port, proc=proc)
        self.doubles[name] = double
        from fastgpt_portal.upstream.double import DOUBLE_APP_KEY
        from fastgpt_portal.upstream.models import App

        App.objects.update_or_create(
            slug=f"bench-{name}",
            defaults={
                "name": f"Bench {name}",
                "base_url": double.url,
                "api_key": DOUBLE_APP_KEY,
                "enabled": True,
                "healthy": True,
            },
        )
        return double

    def start_portal(self) -> None:
        cfg = self.config
        for i in range(cfg.worker_processes):
            self.workers.append(
                self._spawn(
                    f"worker{i}",
                    [
                        PY,
                        "-m",
                        "celery",
                        "-A",
                        "fastgpt_portal",
                        "worker",
                        "--pool",
                        cfg.worker_pool,
                        "--concurrency",
                        str(cfg.worker_concurrency),
                        "--loglevel",
                        "WARNING",
                        "-n",
                        f"bench{i}-{uuid.uuid4().hex[:6]}@localhost",
                        "--without-heartbeat",
                        "--without-gossip",
                        "--without-mingle",
                    ],
                )  # fmt: skip
            )
        self.web_port = free_port()
        args = [
            PY, "-m", "uvicorn", "fastgpt_portal.asgi:application", "--host", "127.0.0.1",
            "--port", str(self.web_port), "--log-level", "warning", "--no-access-log",
            "--backlog", "4096",
        ]  # fmt: skip
        if cfg.web_workers > 1:
            args += ["--workers", str(cfg.web_workers)]
        self.web = self._spawn("web", args)
        self.web_url = f"http://127.0.0.1:{self.web_port}"
        wait_for_port(self.web_port, self.web, "the web server")
        self._wait_for_workers()

    def _wait_for_workers(self, timeout: float = 60.0) -> None:
        from fastgpt_portal.celery import app

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.workers:
                if proc.poll() is not None:
                    raise RuntimeError(f"a worker exited:\n{self.log_tail(proc.bench_name)}")
            replies = app.control.ping(timeout=0.5) or []
            names = {name for reply in replies for name in reply}
            if sum(1 for n in names if n.startswith("bench")) >= len(self.workers):
                return
        raise RuntimeError("the Celery worker did not start")

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop every process; `keep_logs` keeps the processes' logs to diagnose a failure."""
        for proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.children:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.redis is not None:
            self.redis.stop()
        if keep_logs:
            print(f"The stack's logs are kept in {self.tmp}", flush=True)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ fixtures

    def users(self, count: int, prefix: str = "bench") -> list[dict[str, str]]:
        """`count` distinct users, each with a logged-in session and a CSRF token."""
        from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
        from django.contrib.sessions.backends.db import SessionStore
        from django.utils.crypto import get_random_string

        from fastgpt_portal.accounts.models import User

        names = [f"{prefix}-{i:05d}" for i in range(count)]
        existing = set(User.objects.filter(username__in=names).values_list("username", flat=True))
        User.objects.bulk_create(
            [
                User(username=n, password="!", email=f"{n}@bench.invalid")
                for n in names
                if n not in existing
            ]
        )
        out = []
        for user in User.objects.filter(username__in=names).order_by("username"):
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.create()
            # An unmasked CSRF secret works both as the cookie and as the X-CSRFToken header.
            csrf = get_random_string(32)
            out.append(
                {
                    "username": user.username,
                    "cookie": f"sessionid={session.session_key}; csrftoken={csrf}",
                    "csrf": csrf,
                }
            )
        return out


class Monitor:
    """CPU time and peak resident memory of named groups of processes, sampled in a thread."""

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.2) -> None:
        self.groups = {name: [psutil.Process(pid) for pid in pids] for name, pids in groups.items()}
        self.interval = interval
        self.peak_rss: dict[str, int] = {name: 0 for name in self.groups}
        self.start_rss: dict[str, int] = {}
        self._cpu0: dict[str, dict[int, float]] = {}
        self._cpu_seen: dict[str, dict[int, float]] = {name: {} for name in self.groups}
        self.cpu: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.wall = 0.0

    def _members(self, name: str) -> list[psutil.Process]:
        procs = []
        for proc in self.groups[name]:
            procs.append(proc)
            try:
                procs.extend(proc.children(recursive=True))
            except psutil.Error:
                pass
        return procs

    def _sample_cpu(self, name: str) -> None:
        """Note each member's CPU time so far, by pid.

        Per pid, not a sum of the living: PostgreSQL's backends come and go (a pool closing a
        connection), and a sum of the living went down when one ended, so the group's CPU came
        out negative. An ended process keeps what it had at its last sample (at most one
        interval short).
        """
        seen = self._cpu_seen[name]
        for proc in self._members(name):
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            seen[proc.pid] = t.user + t.system

    def _rss(self, name: str) -> int:
        total = 0
        for proc in self._members(name):
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def __enter__(self) -> Monitor:
        self._t0 = time.monotonic()
        for name in self.groups:
            self._sample_cpu(name)
            self._cpu0[name] = dict(self._cpu_seen[name])
            self.start_rss[name] = self._rss(name)
            self.peak_rss[name] = self.start_rss[name]
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for name in self.groups:
                self.peak_rss[name] = max(self.peak_rss[name], self._rss(name))
                self._sample_cpu(name)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.wall = time.monotonic() - self._t0
        for name in self.groups:
            self._sample_cpu(name)
            start = self._cpu0[name]
            self.cpu[name] = sum(t - start.get(pid, 0.0) for pid, t in self._cpu_seen[name].items())


def redis_pid(url: str) -> int | None:
    """The pid of the Redis server behind `url` if it runs on this machine (INFO server)."""
    import redis

    try:
        info = redis.Redis.from_url(url).info("server")
        pid = int(info["process_id"])
        psutil.Process(pid)
        return pid
    except Exception:
        return None


def token() -> str:
    return secrets.token_hex(4)
