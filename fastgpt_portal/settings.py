"""The only settings module. Every knob comes from the environment; see .env.example."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

from fastgpt_portal.lib import dbpool
from fastgpt_portal.lib.env import envbool, envfloat, envint, envlist, envsecret, envstr

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DEBUG", False)
_DEV_SECRET = "dev-only-insecure-secret-key-do-not-use-in-production"
SECRET_KEY = envsecret("SECRET_KEY") or (_DEV_SECRET if DEBUG else "")
if (
    not SECRET_KEY
    or len(SECRET_KEY) < 32
    or (not DEBUG and (SECRET_KEY == _DEV_SECRET or SECRET_KEY.startswith("change-me")))
):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a random value of at least 32 characters outside DEBUG "
        "(python -c 'import secrets; print(secrets.token_urlsafe(50))')."
    )

_raw_fernet = envsecret("FIELD_ENCRYPTION_KEY")
if _raw_fernet:
    # A comma-separated list: the first key encrypts, all of them decrypt (rotation).
    FIELD_ENCRYPTION_KEYS = [k.strip() for k in _raw_fernet.split(",") if k.strip()]
elif DEBUG:
    FIELD_ENCRYPTION_KEYS = [
        base64.urlsafe_b64encode(hashlib.sha256(SECRET_KEY.encode()).digest()).decode()
    ]
else:
    raise ImproperlyConfigured(
        "FIELD_ENCRYPTION_KEY must be set outside DEBUG (python -c "
        "'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')."
    )

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
SITE_NAME = envstr("SITE_NAME", "FastGPT Portal")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "fastgpt_portal.accounts",
    "fastgpt_portal.upstream",
    "fastgpt_portal.chat",
    "fastgpt_portal.usage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # WhiteNoise, async-capable: a sync-only middleware costs every ASGI request thread hops.
    "fastgpt_portal.lib.static.AsyncWhiteNoiseMiddleware",
    # Above the session middleware, so a lost database there is a 503 page too.
    "fastgpt_portal.lib.middleware.DatabaseUnavailableMiddleware",
    "fastgpt_portal.lib.middleware.MalformedFormMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    # Django's, with a current login read without the ORM's per-query cost (accounts.middleware).
    "fastgpt_portal.accounts.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: runs the chain above in one thread instead of a thread hop per middleware (ASGI).
    "fastgpt_portal.lib.sync_chain.SyncChainMiddleware",
]

ROOT_URLCONF = "fastgpt_portal.urls"
ASGI_APPLICATION = "fastgpt_portal.asgi.application"
WSGI_APPLICATION = "fastgpt_portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
                "fastgpt_portal.chat.context_processors.portal",
                "fastgpt_portal.usage.context_processors.quota",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=envint("DB_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Tests share the database with a real worker process, so it must be a file, not :memory:.
    DATABASES["default"]["TEST"] = {
        "NAME": envstr("PORTAL_TEST_DB_NAME") or str(BASE_DIR / "test-db.sqlite3")
    }
    # WAL lets the web process read while the worker checkpoints answers.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and envint("DB_POOL_MAX", 20):
    # A connection pool per process (psycopg_pool). Under ASGI each request runs in a thread of
    # its own, and the worker runs a thread per streaming turn: connecting per request costs
    # milliseconds, and unpooled they would need more connections than PostgreSQL's default 100.
    # Django requires CONN_MAX_AGE=0 with a pool; DB_POOL_MAX=0 turns the pool off.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": envint("DB_POOL_MAX", 20),
        "timeout": envfloat("DB_POOL_TIMEOUT", 30.0),
        # Check only connections idle for a while: a round trip per request otherwise.
        "check": dbpool.check,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = envstr("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve straight from the app folders in DEBUG so `make run` needs no collectstatic.
WHITENOISE_USE_FINDERS = DEBUG

# Redis: broker and answer streams. Unset means the embedded Redis that `make run` and the
# tests start (see fastgpt_portal.lib.embedded_redis); they export REDIS_URL for the processes.
REDIS_URL = envstr("REDIS_URL", "redis://127.0.0.1:6379/0")

# Shared by every web process (login throttling, quotas), so not per-process memory. The
# prefix is the queue name, which already keeps test runs apart from a portal on the same Redis.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": envstr("PORTAL_QUEUE", "portal"),
        "OPTIONS": {"socket_connect_timeout": 5, "socket_timeout": 5},
    }
}

CELERY_BROKER_URL = REDIS_URL
if REDIS_URL.startswith("redis://"):
    # kombu's Redis transport, one client per channel instead of one per command (lib/broker).
    CELERY_BROKER_TRANSPORT = "fastgpt_portal.lib.broker:Transport"
# A separate queue name lets test runs and benchmarks share a Redis with a running portal.
CELERY_TASK_DEFAULT_QUEUE = envstr("PORTAL_QUEUE", "portal")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# No unacked-message bookkeeping in Redis (kombu's ack emulation): it cost every turn two Redis
# transactions in the worker's consumer thread, one before the task starts (bench/RESULTS.md),
# and gave a lost message back only after the visibility timeout. A worker that shuts down
# still gives back the messages it holds (kombu keeps them in memory); for one that dies, the
# database says which turns are owed an answer and the sweeper resends a queued turn within
# PORTAL_REQUEUE_SECONDS, and fails or resends a running one.
CELERY_BROKER_TRANSPORT_OPTIONS = {"ack_emulation": False}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE = {
    "sweep-stuck-turns": {"task": "chat.sweep_turns", "schedule": 30.0},
}

# The portal's own knobs.
PORTAL_CUSTOM_UID = envstr("PORTAL_CUSTOM_UID", "username")
if PORTAL_CUSTOM_UID not in ("username", "email", "opaque"):
    raise ImproperlyConfigured("PORTAL_CUSTOM_UID must be username, email or opaque.")
PORTAL_EMBED_ORIGINS = envlist("PORTAL_EMBED_ORIGINS")
PORTAL_MAX_QUESTION_CHARS = envint("PORTAL_MAX_QUESTION_CHARS", 20000)
FASTGPT_TIMEOUT = envfloat("FASTGPT_TIMEOUT", 300.0)
FASTGPT_CONNECT_TIMEOUT = envfloat("FASTGPT_CONNECT_TIMEOUT", 10.0)
# How often the worker writes partial answers to the database, in seconds. The answer stream in
# Redis holds every word meanwhile (a lost worker's answer is recovered from there), so this
# only bounds what is lost when Redis is lost too.
PORTAL_CHECKPOINT_SECONDS = envfloat("PORTAL_CHECKPOINT_SECONDS", 2.0)
# A running turn whose worker has said nothing for this long is failed by the sweeper.
PORTAL_STALE_SECONDS = envint("PORTAL_STALE_SECONDS", 90)
# A queued turn older than this is re-sent by the sweeper (its message was lost with Redis).
PORTAL_REQUEUE_SECONDS = envint("PORTAL_REQUEUE_SECONDS", 60)
PORTAL_STREAM_TTL_SECONDS = envint("PORTAL_STREAM_TTL_SECONDS", 3600)
# While answers stream, the worker writes to Redis and each web process reads from it at most
# once per this many milliseconds, so a thousand streams cost a few round trips, not one per
# token. The window grows with the number of answers streaming (by this much per 50) up to
# PORTAL_COALESCE_MAX_MS. A lone answer and every answer's first token go through at once.
# 150, not 50: from 500 streams on, the web process writes each browser a third as often (its
# CPU -20%, the clients' -35%, bench/RESULTS.md 2026-12-05), and text arriving every 150 ms
# still reads as a stream.
PORTAL_COALESCE_MS = envint("PORTAL_COALESCE_MS", 15)
PORTAL_COALESCE_MAX_MS = envint("PORTAL_COALESCE_MAX_MS", 150)
# Requests a web process works on at once (answer streams aside); the rest wait their turn in
# order. Each runs in one of this many pooled threads (lib/threaded_django.py), and threads
# share one core's worth of Python: more at once only makes each slower (lib/asgi_limit.py).
# 0 for no limit (32 threads).
PORTAL_WEB_CONCURRENCY = envint("PORTAL_WEB_CONCURRENCY", 8)
# Transient upstream failures (connect errors, proxy 502/503/504, 429) are retried this many
# times in all, waiting base * 2^n seconds (with jitter, at most max) between tries.
PORTAL_RETRY_ATTEMPTS = envint("PORTAL_RETRY_ATTEMPTS", 4)
PORTAL_RETRY_BASE_SECONDS = envfloat("PORTAL_RETRY_BASE_SECONDS", 1.0)
PORTAL_RETRY_MAX_SECONDS = envfloat("PORTAL_RETRY_MAX_SECONDS", 30.0)

# Security. Content Security Policy without unsafe-inline / unsafe-eval; htmx is configured
# (static/js/portal.js) so it needs neither.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.SELF, *PORTAL_EMBED_ORIGINS],
    "form-action": [CSP.SELF],
    "base-uri": [CSP.NONE],
    "object-src": [CSP.NONE],
}
# Login throttling (accounts.forms): this many failures per username and client address within
# the window lock that pair out for the window. PORTAL_PROXY_COUNT: how many reverse proxies
# append to X-Forwarded-For in front of the portal (0: use the connection's address).
PORTAL_LOGIN_MAX_FAILURES = envint("PORTAL_LOGIN_MAX_FAILURES", 5)
PORTAL_LOGIN_WINDOW_SECONDS = envint("PORTAL_LOGIN_WINDOW_SECONDS", 15 * 60)
PORTAL_PROXY_COUNT = envint("PORTAL_PROXY_COUNT", 0)
# Hides POST fields and local variables named like secrets (api_key, password…) in error reports.
DEFAULT_EXCEPTION_REPORTER_FILTER = "fastgpt_portal.lib.middleware.SecretsExceptionReporterFilter"
# Django's database sessions, read with one precompiled statement (accounts.sessions).
SESSION_ENGINE = "fastgpt_portal.accounts.sessions"
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", True)
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    if not SECURE_HSTS_PRELOAD:
        # Preloading is a commitment for a whole domain; intranet hosts often cannot make it,
        # so it is the operator's choice (SECURE_HSTS_PRELOAD=true), not a deploy warning.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]
    # /healthz is probed over plain HTTP inside the cluster.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]

# Error reports and other mail. SMTP in production; printed to the console in DEBUG.
MAILERS = {
    "default": {
        "BACKEND": envstr(
            "EMAIL_BACKEND",
            "django.core.mail.backends.console.EmailBackend"
            if DEBUG
            else "django.core.mail.backends.smtp.EmailBackend",
        ),
        "OPTIONS": {}
        if DEBUG and not envstr("EMAIL_BACKEND")
        else {
            "host": envstr("EMAIL_HOST", "localhost"),
            "port": envint("EMAIL_PORT", 25),
            "username": envstr("EMAIL_HOST_USER"),
            "password": envsecret("EMAIL_HOST_PASSWORD"),
            "use_tls": envbool("EMAIL_USE_TLS", False),
        },
    }
}
SERVER_EMAIL = envstr("SERVER_EMAIL", "portal@localhost")
ADMINS = envlist("ADMINS")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
    "loggers": {
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        # Its DEBUG lines dump whole template contexts, error reports' exceptions included
        # (LOG_LEVEL=DEBUG would put an app key from an exception's args into the log).
        "django.template": {"level": "INFO"},
    },
}
