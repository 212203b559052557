"""Operational endpoints: /healthz for probes, /metrics for Prometheus."""

from __future__ import annotations

import time

from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from fastgpt_portal.chat import relay
from fastgpt_portal.chat.models import Turn

WORKER_KEY = "portal:worker:alive"


def _check_database() -> dict:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": exc.__class__.__name__}


def _check_redis() -> dict:
    try:
        relay.sync_redis().ping()
        return {"ok": True}
    except Exception as exc:
        return {"ok": False, "error": exc.__class__.__name__}


def _check_worker() -> dict:
    """Workers write a heartbeat key (see chat.signals); older than 60 s means none is alive."""
    try:
        beat = relay.sync_redis().get(WORKER_KEY)
    except Exception as exc:
        return {"ok": False, "error": exc.__class__.__name__}
    if not beat:
        return {"ok": False, "error": "no worker has reported in the last minute"}
    return {"ok": True, "age_seconds": round(time.time() - float(beat), 1)}


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check_database(), "redis": _check_redis(), "worker": _check_worker()}
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry()
    turns = Gauge("portal_turns", "Turns by status", ["status"], registry=registry)
    counts = dict(Turn.objects.values_list("status").annotate(n=Count("pk")))
    for status in Turn.Status.values:
        turns.labels(status=status).set(counts.get(status, 0))
    up = Gauge("portal_dependency_up", "Whether a dependency answers", ["name"], registry=registry)
    up.labels(name="database").set(1 if _check_database()["ok"] else 0)
    up.labels(name="redis").set(1 if _check_redis()["ok"] else 0)
    up.labels(name="worker").set(1 if _check_worker()["ok"] else 0)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
