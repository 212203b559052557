"""The production shape (Dockerfile, docker-compose.yml, .env.example) matches the code.

No Docker engine runs here, so these tests read the files and hold each promise of the production
shape against its source of truth: the settings module (which variables it reads, which ASGI app
it names), the Makefile's runner (fastgpt_portal/lib/devserver.py: the Celery app, pool and
concurrency it starts), .python-version and requirements.lock. None needs the database or Redis.
"""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
import pytest
import yaml
from cryptography.fernet import Fernet
from django.conf import settings
from django.http.request import split_domain_port, validate_host

ROOT = Path(__file__).resolve().parent.parent
PORTAL_SERVICES = ("web", "worker", "beat", "migrate")
LONG_RUNNING = ("web", "worker", "beat")
ALL_SERVICES = (*PORTAL_SERVICES, "redis", "postgres")
# Settings that must be set in production: the settings refuse to start without them outside
# DEBUG, or fall back to something only a developer's machine has (SQLite file, local Redis).
REQUIRED_IN_PRODUCTION = (
    "SECRET_KEY",
    "FIELD_ENCRYPTION_KEY",
    "ALLOWED_HOSTS",
    "DATABASE_URL",
    "REDIS_URL",
)
SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEY")
VAR_REF = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


# -- reading the files ---------------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def service(name: str) -> dict:
    services = compose().get("services") or {}
    assert name in services, f"docker-compose.yml has no service {name!r}"
    return services[name]


@cache
def settings_source() -> str:
    return (ROOT / "fastgpt_portal" / "settings.py").read_text()


@cache
def devserver_source() -> str:
    return (ROOT / "fastgpt_portal" / "lib" / "devserver.py").read_text()


def variables_the_settings_read() -> set[str]:
    source = settings_source()
    names = set(re.findall(r"\benv(?:str|bool|int|float|list|secret)\(\s*[\"'](\w+)[\"']", source))
    # envsecret("X") also reads X_FILE (Docker/Kubernetes secrets).
    secret_names = re.findall(r"\benvsecret\(\s*[\"'](\w+)[\"']", source)
    names |= {f"{name}_FILE" for name in secret_names}
    if "dj_database_url.config(" in source:
        names.add("DATABASE_URL")
    return names


def env_example() -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def substitute(text: str, env: dict[str, str]) -> str:
    """Expand ${NAME}, ${NAME:-default}, ${NAME-default} and $NAME as compose and sh both do."""

    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(4)
        op, default = m.group(2), m.group(3) or ""
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        return value or ""

    return VAR_REF.sub(one, text)


def interpolate(value, env: dict[str, str]):
    """Compose's own interpolation (it reads the shell and .env): `$$` is a literal `$`."""
    if isinstance(value, str):
        parts = value.split("$$")
        return "$".join(substitute(part, env) for part in parts)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def environment(name: str, env: dict[str, str] | None = None) -> dict[str, str]:
    raw = service(name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {k: str(v) for k, v in interpolate(raw, env or {}).items()}


def argv(name: str, env: dict[str, str] | None = None) -> list[str]:
    """The words a service's container runs, with the variables of `env` (the .env file) applied
    at both levels: compose's interpolation and, for `sh -c`, the container's shell."""
    env = env or {}
    command = service(name).get("command")
    if command is None:
        return dockerfile_cmd()
    if isinstance(command, str):
        command = shlex.split(command)
    command = interpolate(command, env)
    if command[:2] in (["sh", "-c"], ["/bin/sh", "-c"], ["bash", "-c"]):
        return [substitute(word, env) for word in shlex.split(command[2])]
    return command


def healthcheck_text(name: str) -> str:
    test = (service(name).get("healthcheck") or {}).get("test") or ""
    return test if isinstance(test, str) else " ".join(test)


def option(words: list[str], *names: str) -> str | None:
    """The value of the first of `names` in `words` (`--opt value` or `--opt=value`)."""
    for i, word in enumerate(words):
        for name in names:
            if word == name and i + 1 < len(words):
                return words[i + 1]
            if word.startswith(name + "="):
                return word.split("=", 1)[1]
    return None


def contains(words: list[str], run: list[str]) -> bool:
    return any(words[i : i + len(run)] == run for i in range(len(words) - len(run) + 1))


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final build stage, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        pending += line
        keyword, _, rest = pending.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


def dockerfile_args(keyword: str) -> list[str]:
    return [rest for k, rest in dockerfile() if k == keyword]


def dockerfile_cmd() -> list[str]:
    cmds = dockerfile_args("CMD")
    assert cmds, "the Dockerfile has no CMD"
    return json.loads(cmds[-1]) if cmds[-1].startswith("[") else ["sh", "-c", cmds[-1]]


def lock_names() -> set[str]:
    text = (ROOT / "requirements.lock").read_text()
    return {m.lower() for m in re.findall(r"^([A-Za-z0-9_.-]+)==", text, re.MULTILINE)}


def asgi_target() -> str:
    module, _, attr = settings.ASGI_APPLICATION.rpartition(".")
    return f"{module}:{attr}"


def devserver_worker() -> dict[str, str]:
    source = devserver_source()
    app = re.search(r'"celery",\s*"-A",\s*"([\w.]+)"', source)
    pool = re.search(r'"worker",\s*"--pool",\s*"(\w+)"', source)
    concurrency = re.search(r'"--concurrency",\s*env\.get\(\s*"(\w+)",\s*"(\d+)"\s*\)', source)
    assert app and pool and concurrency, (
        "devserver.py no longer starts `celery -A <app> worker --pool <pool> --concurrency "
        "env.get(<VAR>, <default>)`: update this test to read its new shape"
    )
    return {
        "app": app.group(1),
        "pool": pool.group(1),
        "concurrency_var": concurrency.group(1),
        "concurrency_default": concurrency.group(2),
    }


# -- compose: services and their order -----------------------------------------------------------


def test_every_service_the_portal_needs_is_defined():
    assert set(ALL_SERVICES) <= set(compose().get("services") or {})


def test_redis_and_postgres_say_when_they_are_ready():
    redis, postgres = service("redis"), service("postgres")
    assert str(redis.get("image", "")).startswith("redis:7")
    assert str(postgres.get("image", "")).startswith("postgres:16")
    redis_check = healthcheck_text("redis")
    assert "redis-cli" in redis_check and "ping" in redis_check
    assert "pg_isready" in healthcheck_text("postgres")


def test_postgres_keeps_its_data_in_a_named_volume():
    mounts = [str(v) for v in service("postgres").get("volumes", [])]
    data = [m.split(":", 1)[0] for m in mounts if m.split(":")[1:2] == ["/var/lib/postgresql/data"]]
    assert data, "postgres does not mount a volume at /var/lib/postgresql/data"
    assert data[0] in (compose().get("volumes") or {}), f"{data[0]!r} is not a named volume"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_portal_processes_start_after_healthy_redis_postgres_and_finished_migrations(name):
    depends = service(name).get("depends_on")
    assert isinstance(depends, dict), f"{name}: depends_on needs conditions, not a plain list"
    conditions = {dep: (spec or {}).get("condition") for dep, spec in depends.items()}
    assert conditions.get("redis") == "service_healthy"
    assert conditions.get("postgres") == "service_healthy"
    assert conditions.get("migrate") == "service_completed_successfully"


def test_migrate_applies_migrations_once_postgres_is_healthy():
    assert contains(argv("migrate"), ["manage.py", "migrate", "--noinput"])
    depends = service("migrate").get("depends_on") or {}
    assert (depends.get("postgres") or {}).get("condition") == "service_healthy"
    # A one-off: restarting it after it succeeded would run it in a loop.
    assert str(service("migrate").get("restart", "no")) in ("no", "on-failure", "False")


@pytest.mark.parametrize("name", PORTAL_SERVICES)
def test_portal_processes_run_the_image_built_here_with_the_env_file(name):
    spec = service(name)
    build = spec.get("build")
    assert build is not None, f"{name} is not built from the Dockerfile"
    if isinstance(build, dict):
        assert build.get("context", ".") in (".", "./")
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    else:
        assert build in (".", "./")
    env_files = spec.get("env_file")
    env_files = [env_files] if isinstance(env_files, str | dict) else env_files or []
    paths = [f["path"] if isinstance(f, dict) else f for f in env_files]
    assert ".env" in paths or "./.env" in paths, f"{name} does not read the settings in .env"


@pytest.mark.parametrize("name", PORTAL_SERVICES)
def test_database_and_redis_urls_point_at_the_compose_services(name):
    env = environment(name)
    assert "DATABASE_URL" in env and "REDIS_URL" in env, f"{name}: DATABASE_URL/REDIS_URL unset"
    database = urlparse(env["DATABASE_URL"])
    assert database.hostname == "postgres"
    assert database.port in (None, 5432)
    assert dj_database_url.parse(env["DATABASE_URL"])["ENGINE"] == "django.db.backends.postgresql"
    # ...and with the credentials the postgres service is initialised with.
    pg = environment("postgres")
    user = pg.get("POSTGRES_USER", "postgres")
    assert database.username == user
    assert database.password == pg.get("POSTGRES_PASSWORD")
    assert database.path.lstrip("/") == pg.get("POSTGRES_DB", user)
    redis = urlparse(env["REDIS_URL"])
    assert redis.scheme in ("redis", "rediss") and redis.hostname == "redis"
    assert redis.port in (None, 6379)


def test_the_image_has_the_drivers_and_servers_the_services_use():
    assert {"uvicorn", "celery", "redis", "whitenoise", "dj-database-url"} <= lock_names()
    assert lock_names() & {"psycopg", "psycopg2", "psycopg2-binary"}, "no PostgreSQL driver"


# -- compose: what each process runs ---------------------------------------------------------------


def test_the_worker_runs_the_celery_app_pool_and_concurrency_that_make_run_uses():
    runner = devserver_worker()
    var, default = runner["concurrency_var"], runner["concurrency_default"]
    words = argv("worker")
    assert "celery" in words and "worker" in words
    assert option(words, "-A", "--app") == runner["app"] == "fastgpt_portal"
    assert option(words, "-P", "--pool") == runner["pool"] == "threads"
    # The concurrency comes from the same variable (in .env), with the same default.
    assert option(words, "-c", "--concurrency") == default
    assert option(argv("worker", {var: "7"}), "-c", "--concurrency") == "7"
    assert var == "WORKER_CONCURRENCY"


def test_beat_runs_the_sweepers_schedule_for_the_same_app():
    words = argv("beat")
    assert "celery" in words and "beat" in words
    assert option(words, "-A", "--app") == devserver_worker()["app"]
    # The code directory belongs to root in the image; beat must keep its schedule elsewhere.
    schedule = option(words, "-s", "--schedule")
    assert schedule and schedule.startswith("/tmp/"), "beat's schedule file must be under /tmp"


def test_web_serves_the_asgi_application_the_settings_name():
    words = argv("web")
    assert "uvicorn" in words
    assert asgi_target() == "fastgpt_portal.asgi:application"
    assert asgi_target() in words
    assert option(words, "--host") == "0.0.0.0"
    assert option(words, "--port") == "8000"


def test_web_publishes_port_8000():
    published = []
    for port in service("web").get("ports", []):
        if isinstance(port, dict):
            published.append((str(port.get("published")), str(port.get("target"))))
        else:
            host, _, container = str(port).rpartition(":")
            published.append((host.rpartition(":")[2], container))
    assert ("8000", "8000") in published


class _Probe(http.server.BaseHTTPRequestHandler):
    status = 200
    seen: list[tuple[str, str]] = []

    def do_GET(self):
        self.seen.append((self.path, self.headers.get("Host", "")))
        body = b'{"ok": true}' if self.status == 200 else b'{"ok": false}'
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status", [200, 503])
@pytest.mark.parametrize(
    "allowed_hosts", [env_example().get("ALLOWED_HOSTS", ""), ".example.org", "*"]
)
def test_web_healthcheck_asks_healthz_as_an_allowed_host_and_fails_on_503(status, allowed_hosts):
    check = service("web").get("healthcheck", {}).get("test")
    assert check, "web has no healthcheck"
    check = ["CMD-SHELL", check] if isinstance(check, str) else check
    assert not any(tool in " ".join(check) for tool in ("curl", "wget")), (
        "the slim image has no curl"
    )
    assert any(":8000/healthz" in part for part in check), "the healthcheck does not ask /healthz"

    handler = type("Probe", (_Probe,), {"status": status, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        words = [part.replace(":8000/", f":{port}/") for part in check[1:]]
        if check[0] == "CMD-SHELL":
            words = ["sh", "-c", " ".join(words)]
        env = {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "ALLOWED_HOSTS": allowed_hosts,
        }
        result = subprocess.run(words, env=env, capture_output=True, text=True, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert len(handler.seen) == 1, result.stderr
    path, host = handler.seen[0]
    assert path == "/healthz"
    # Outside DEBUG Django answers 400 to a Host that is not in ALLOWED_HOSTS.
    domain, _ = split_domain_port(host)
    allowed = [h.strip() for h in allowed_hosts.split(",") if h.strip()]
    assert validate_host(domain, allowed), f"Host {host!r} is not in ALLOWED_HOSTS {allowed}"
    assert (result.returncode == 0) == (status == 200), result.stderr


# -- .env.example against the settings -------------------------------------------------------------


def test_env_example_lists_only_variables_that_take_effect():
    """.env.example is copied to .env for docker compose: each variable in it must be read by the
    settings, or by a command that docker-compose.yml runs (WORKER_CONCURRENCY, FASTGPT_*)."""
    compose_text = (ROOT / "docker-compose.yml").read_text()
    read_by_compose = set(re.findall(r"\$\$?\{?([A-Za-z_]\w*)", compose_text))
    unread = set(env_example()) - variables_the_settings_read() - read_by_compose
    assert not unread, f".env.example sets variables nothing reads: {sorted(unread)}"


def test_env_example_lists_every_variable_without_a_safe_production_default():
    read = variables_the_settings_read()
    assert set(REQUIRED_IN_PRODUCTION) <= read, "the settings no longer read these names"
    missing = set(REQUIRED_IN_PRODUCTION) - set(env_example())
    assert not missing, f".env.example does not mention {sorted(missing)}"


def _import_settings(env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ.get("PATH", ""), **env}
    return subprocess.run(
        [sys.executable, "-c", "import fastgpt_portal.settings"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("secret", SECRETS)
def test_settings_refuse_to_start_with_the_env_example_placeholder_secrets(secret):
    """Someone who copies .env.example and forgets a secret must get a refusal, not a site running
    with a key published in this repository."""
    good = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }
    env = {**env_example(), **{k: v for k, v in good.items() if k != secret}, "DEBUG": "false"}
    assert _import_settings({**env, secret: good[secret]}).returncode == 0, "control case failed"
    result = _import_settings(env)
    assert result.returncode != 0, (
        f"the settings start with .env.example's placeholder {secret}={env_example()[secret]!r}"
    )
    assert "ImproperlyConfigured" in result.stderr and secret in result.stderr


# -- the Dockerfile --------------------------------------------------------------------------------


def test_the_image_is_built_on_the_python_of_python_version():
    wanted = ".".join((ROOT / ".python-version").read_text().strip().split(".")[:2])
    base = dockerfile_args("FROM")[0].split()[0]
    assert re.fullmatch(rf"(docker\.io/)?(library/)?python:{re.escape(wanted)}([-@].*)?", base), (
        f"base image {base!r} is not python:{wanted}"
    )


def test_the_image_installs_the_runtime_lock_with_hashes():
    installs = [r for r in dockerfile_args("RUN") if "pip install" in r]
    assert installs, "the Dockerfile installs nothing with pip"
    for run in installs:
        words = shlex.split(run)
        assert "--require-hashes" in words
        assert option(words, "-r", "--requirement") == "requirements.lock"
    assert any("requirements.lock" in c for c in dockerfile_args("COPY"))


def test_the_image_runs_as_a_non_root_user():
    users = dockerfile_args("USER")
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_static_files_are_collected_at_build_time_without_baking_in_a_secret():
    collect = [r for r in dockerfile_args("RUN") if "collectstatic" in r]
    assert collect and "--noinput" in collect[0]
    inline = {}
    for word in shlex.split(collect[0]):
        if not re.fullmatch(r"\w+=.*", word):
            break
        name, _, value = word.partition("=")
        inline[name] = value
    assert inline.get("DEBUG", "").lower() in ("false", "0", "no", "off")
    # The build-only values really let the production settings import...
    result = _import_settings(inline)
    assert result.returncode == 0, result.stderr
    # ...and none of them is left in the image's environment.
    for keyword in ("ENV", "ARG"):
        for args in dockerfile_args(keyword):
            assert not any(secret in args for secret in SECRETS), f"{keyword} {args}"


def test_the_image_serves_the_asgi_app_on_port_8000():
    cmd = dockerfile_cmd()
    assert cmd[0] == "uvicorn" and asgi_target() in cmd
    assert option(cmd, "--host") == "0.0.0.0"
    assert option(cmd, "--port") == "8000"
    assert any("8000" in e.split() for e in dockerfile_args("EXPOSE"))


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last matching pattern wins; a folder's pattern covers all
    inside it; `**/` also matches at the top."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(p, c) for p in prefixes for c in candidates):
            result = not negate
    return result


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]


@pytest.mark.parametrize(
    "path",
    [".env", ".git/config", ".venv/bin/python", "db.sqlite3", "db.sqlite3-wal", "test-db.sqlite3",
     ".admin-password", "staticfiles/admin/css/base.css", "fastgpt_portal/__pycache__/x.pyc",
     ".pytest_cache/v/cache", ".ruff_cache/x"],
)  # fmt: skip
def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image(path):
    assert _ignored(path, _dockerignore()), f"{path} would be copied into the image"


@pytest.mark.parametrize("path", ["manage.py", "fastgpt_portal/settings.py", "requirements.lock",
                                  "static/js/portal.js", "templates/base.html"])  # fmt: skip
def test_dockerignore_keeps_what_the_image_needs(path):
    assert not _ignored(path, _dockerignore()), f"{path} would be left out of the image"
