"""In production (DEBUG=false) cookies are Secure, HTTPS is enforced and HSTS is sent.

Settings are computed from the environment at import, so a subprocess starts Django with
production variables and makes real requests through the real middleware stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent.parent

SCRIPT = textwrap.dedent(
    """
    import json
    import django
    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client

    call_command("migrate", verbosity=0)
    from fastgpt_portal.accounts.models import User
    User.objects.create_user("alice", password="alice-pass-123")

    browser = Client(HTTP_HOST="portal.example.org")
    plain = browser.get("/accounts/login/?next=/")
    health = browser.get("/healthz")
    login = browser.post(
        "/accounts/login/", {"username": "alice", "password": "alice-pass-123"}, secure=True
    )
    cookies = {name: dict(morsel) for name, morsel in login.cookies.items()}
    print(json.dumps({
        "settings": {name: getattr(settings, name) for name in (
            "DEBUG", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SESSION_COOKIE_HTTPONLY",
            "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SECURE_PROXY_SSL_HEADER", "SECURE_CONTENT_TYPE_NOSNIFF", "X_FRAME_OPTIONS",
        )},
        "plain": [plain.status_code, plain.headers.get("Location")],
        "health": health.status_code,
        "login": [login.status_code, login.headers.get("Strict-Transport-Security")],
        "cookies": cookies,
    }))
    """
)


def run_django(env: dict[str, str]) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT, env={**clean, "DJANGO_SETTINGS_MODULE": "fastgpt_portal.settings", **env},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def production(tmp_path_factory) -> dict:
    db = tmp_path_factory.mktemp("prod") / "db.sqlite3"
    return run_django(
        {
            "DEBUG": "false",
            "SECRET_KEY": "p" * 20 + "-production-like-secret-0123456789-abcdef",
            "FIELD_ENCRYPTION_KEY": Fernet.generate_key().decode(),
            "ALLOWED_HOSTS": "portal.example.org",
            "DATABASE_URL": f"sqlite:///{db}",
        }
    )


def test_production_settings_are_secure(production):
    s = production["settings"]
    assert s["DEBUG"] is False
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"] and s["SESSION_COOKIE_HTTPONLY"]
    assert s["SECURE_SSL_REDIRECT"] is True
    assert s["SECURE_HSTS_SECONDS"] >= 31536000 and s["SECURE_HSTS_INCLUDE_SUBDOMAINS"]
    assert s["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert s["SECURE_CONTENT_TYPE_NOSNIFF"] and s["X_FRAME_OPTIONS"] == "DENY"


def test_plain_http_is_redirected_to_https(production):
    status, location = production["plain"]
    assert status == 301
    assert location == "https://portal.example.org/accounts/login/?next=/"


def test_health_probes_are_exempt_from_the_redirect(production):
    assert production["health"] != 301


def test_https_responses_carry_hsts(production):
    status, hsts = production["login"]
    assert status == 302, "alice logged in"
    assert hsts == "max-age=31536000; includeSubDomains"


def test_the_session_and_csrf_cookies_are_secure_and_the_session_is_http_only(production):
    session = production["cookies"]["sessionid"]
    assert session["secure"] is True and session["httponly"] is True
    assert session["samesite"] == "Lax"
    csrf = production["cookies"]["csrftoken"]
    assert csrf["secure"] is True


def test_development_is_left_on_plain_http(tmp_path):
    dev = run_django(
        {
            "DEBUG": "true",
            "ALLOWED_HOSTS": "portal.example.org",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        }
    )
    assert dev["settings"]["SECURE_SSL_REDIRECT"] is False
    assert dev["settings"]["SESSION_COOKIE_SECURE"] is False
    assert dev["plain"][0] == 200
