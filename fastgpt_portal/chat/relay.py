"""The Redis stream that carries one turn's answer from the worker to any number of browsers.

Each turn has a capped stream `portal:turn:<pk>` with a TTL. Entries are {"e": event, "d": data};
events: delta (answer text), reasoning, status (a node's name), done (the turn has finished and
the database holds the final state). A browser that reconnects resumes after the last id it saw.
"""

from __future__ import annotations

import asyncio
import threading

import redis
import redis.asyncio as aioredis
from django.conf import settings

STREAM_MAXLEN = 20_000

_sync_client: redis.Redis | None = None
_sync_lock = threading.Lock()
_async_clients: dict[int, aioredis.Redis] = {}


def stream_key(turn_pk: int) -> str:
    return f"portal:turn:{turn_pk}"


def cancel_key(turn_pk: int) -> str:
    return f"portal:cancel:{turn_pk}"


def sync_redis() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        with _sync_lock:
            if _sync_client is None:
                _sync_client = redis.Redis.from_url(
                    settings.REDIS_URL,
                    decode_responses=True,
                    max_connections=1000,
                    socket_timeout=10,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                )
    return _sync_client


def async_redis() -> aioredis.Redis:
    """One client per event loop: redis.asyncio connections belong to the loop that made them."""
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        # A blocking XREAD waits up to 15 s, so the socket timeout must be longer than that,
        # and the pool must not cap at redis-py's default of 100 connections.
        client = aioredis.Redis.from_url(
            settings.REDIS_URL,
            decode_responses=True,
            max_connections=10_000,
            socket_timeout=30,
            socket_connect_timeout=5,
        )
        _async_clients[loop_id] = client
    return client


class Publisher:
    """Writes one turn's events; pipelines the XADD with the TTL refresh (one round trip)."""

    def __init__(self, turn_pk: int, client: redis.Redis | None = None) -> None:
        self.key = stream_key(turn_pk)
        self.turn_pk = turn_pk
        self.client = client or sync_redis()
        self.ttl = settings.PORTAL_STREAM_TTL_SECONDS

    def publish(self, entries: list[tuple[str, str]]) -> None:
        if not entries:
            return
        pipe = self.client.pipeline(transaction=False)
        for event, data in entries:
            pipe.xadd(self.key, {"e": event, "d": data}, maxlen=STREAM_MAXLEN, approximate=True)
        pipe.expire(self.key, self.ttl)
        pipe.execute()

    def cancel_requested(self) -> bool:
        return bool(self.client.exists(cancel_key(self.turn_pk)))

    def reset(self) -> None:
        """Forget an earlier try's events (Retry re-runs the same turn)."""
        self.client.delete(self.key, cancel_key(self.turn_pk))


def request_cancel(turn_pk: int) -> None:
    sync_redis().set(cancel_key(turn_pk), "1", ex=settings.PORTAL_STREAM_TTL_SECONDS)


def publish_done(turn_pk: int) -> None:
    Publisher(turn_pk).publish([("done", "")])
