"""`make run`: set everything up and serve the portal, with a worker, beat and Redis.

Starts an embedded Redis unless REDIS_URL is set, the FastGPT double as a labelled demo
upstream unless FASTGPT_BASE_URL and FASTGPT_API_KEY are set, then the Celery worker, Celery beat
and the ASGI server. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastgpt_portal.lib.embedded_redis import EmbeddedRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
DEMO_KEY_ENV = "PORTAL_DEMO_KEY"


def manage(*args: str, stdin: str | None = None, env: dict | None = None) -> None:
    subprocess.run(
        [PY, str(ROOT / "manage.py"), *args], input=stdin, text=True, check=True, env=env
    )


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    """Wait until `process` listens on `port`; if it exits first, something else owned the port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the process for port {port} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing is listening on port {port}")


def database_problem(url: str) -> str:
    """Why PostgreSQL at DATABASE_URL cannot be used, in words ("" if it can, or for SQLite).

    Asked once, directly: through Django's pool a missing database or a refused login only
    shows as "couldn't get a connection after 30 sec", after 30 seconds.
    """
    if not url.startswith(("postgres://", "postgresql://")):
        return ""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split()) or "no reason given"
        reason = reason.rpartition("FATAL:")[2].strip().rstrip(".?")  # the server's words
        return (
            f"DATABASE_URL cannot be used: {reason}. Fix it (for a missing database: "
            "createdb <name>), or unset DATABASE_URL to use SQLite."
        )
    return ""


def main() -> int:
    env = os.environ.copy()
    env.setdefault("DEBUG", "true")
    env.setdefault("PYTHONUNBUFFERED", "1")
    port = int(env.get("PORT", "8000"))
    host = env.get("HOST", "127.0.0.1")
    if port_in_use(host, port):
        print(f"Port {port} is already in use. Stop what uses it, or run: make run PORT=8001")
        return 1
    if problem := database_problem(env.get("DATABASE_URL", "")):
        print(problem)
        return 1
    children: list[subprocess.Popen] = []
    redis = None
    if not env.get("REDIS_URL"):
        # Never on the web port: a helper listening there would look like the portal.
        redis = EmbeddedRedis(exclude={port}).start()
        env["REDIS_URL"] = redis.url
        print(f"Started an embedded Redis at {redis.url}")
    os.environ.update(env)

    try:
        manage("migrate", "--noinput", env=env)
        base, key = env.get("FASTGPT_BASE_URL"), env.get("FASTGPT_API_KEY")
        if base and key:
            name = env.get("FASTGPT_APP_NAME") or "FastGPT"
            manage(
                "portal_app", "add", "--name", name, "--base-url", base, stdin=key + "\n", env=env
            )
        else:
            from fastgpt_portal.upstream.double import DOUBLE_APP_KEY

            double_port = free_port(exclude={port})
            children.append(
                subprocess.Popen(
                    [
                        PY,
                        str(ROOT / "manage.py"),
                        "fastgpt_double",
                        "--port",
                        str(double_port),
                        "--token-rate",
                        env.get("DEMO_TOKEN_RATE", "30"),
                    ],
                    env=env,
                )  # fmt: skip
            )
            wait_for_port(double_port, children[-1])
            manage(
                "portal_app", "add", "--name", "Demo assistant", "--slug", "demo",
                "--base-url", f"http://127.0.0.1:{double_port}", "--demo",
                stdin=DOUBLE_APP_KEY + "\n", env=env,
            )  # fmt: skip
            print(
                "No FASTGPT_BASE_URL/FASTGPT_API_KEY: the app 'Demo assistant' is answered by the "
                "built-in FastGPT double (labelled as a demo in the UI)."
            )
        admin_args = []
        if env.get("PORTAL_ADMIN_PASSWORD_FILE"):
            admin_args = ["--password-file", env["PORTAL_ADMIN_PASSWORD_FILE"]]
        manage("portal_admin", *admin_args, env=env)
        beat_dir = tempfile.mkdtemp(prefix="portal-beat-")
        celery = [PY, "-m", "celery", "-A", "fastgpt_portal"]
        children.append(
            subprocess.Popen(
                [
                    *celery,
                    "worker",
                    "--pool",
                    "threads",
                    "--concurrency",
                    env.get("WORKER_CONCURRENCY", "500"),
                    "--loglevel",
                    "INFO",
                ],
                env=env,
            )  # fmt: skip
        )
        children.append(
            subprocess.Popen(
                [
                    *celery,
                    "beat",
                    "--schedule",
                    str(Path(beat_dir) / "schedule"),
                    "--loglevel",
                    "WARNING",
                ],
                env=env,
            )  # fmt: skip
        )
        children.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "uvicorn",
                    "fastgpt_portal.asgi:application",
                    "--host",
                    host,
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                env=env,
            )  # fmt: skip
        )
        wait_for_port(port, children[-1])
        print(f"\nThe portal is running: http://127.0.0.1:{port}/  (Ctrl-C stops everything)\n")
        stopping: list[int] = []

        def stop(signum: int, _frame: object) -> None:
            # Ctrl-C reaches the children too (one process group); they stop on their own.
            stopping.append(signum)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while not stopping and all(c.poll() is None for c in children):
            time.sleep(0.2)
        if stopping:
            print("\nStopping…")
            return 0
        dead = [c for c in children if c.poll() is not None]
        print(f"A process stopped ({dead[0].args[:4]}); stopping the rest.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping…")
        return 0
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"make run could not start the portal: {exc}", file=sys.stderr)
        return 1
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if redis:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
