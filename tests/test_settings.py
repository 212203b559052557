"""Settings come from the environment; production refuses to start on dev values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FERNET = "Jg8pDdtu2Y8X3xUSk6Tmv2dGlgnSmQ7ALwSCPa0b7hQ="
PROD = {
    "DEBUG": "false",
    "SECRET_KEY": "k" * 20 + "realistic-secret-value-0123456789-abcdefghij",
    "FIELD_ENCRYPTION_KEY": FERNET,
    "ALLOWED_HOSTS": "portal.example.org",
    "DATABASE_URL": "sqlite:////tmp/portal-settings-test.sqlite3",
    "REDIS_URL": "redis://127.0.0.1:1/0",
}


def manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in PROD}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT, env={**clean, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_production_refuses_to_start_without_a_secret_key():
    env = {k: v for k, v in PROD.items() if k != "SECRET_KEY"}
    result = manage("check", **env)
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_production_refuses_the_development_secret_key():
    result = manage(
        "check", **{**PROD, "SECRET_KEY": "dev-only-insecure-secret-key-do-not-use-in-production"}
    )
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_refuses_to_start_without_an_encryption_key():
    env = {k: v for k, v in PROD.items() if k != "FIELD_ENCRYPTION_KEY"}
    result = manage("check", **env)
    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEY must be set" in result.stderr


def test_check_deploy_is_clean_with_production_settings():
    result = manage("check", "--deploy", "--fail-level", "WARNING", **PROD)
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_a_typo_in_a_boolean_stops_the_site():
    result = manage("check", **{**PROD, "DEBUG": "ture"})
    assert result.returncode != 0
    assert "DEBUG must be True or False" in result.stderr
