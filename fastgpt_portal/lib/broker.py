"""Celery's Redis transport, without a new redis-py client for every command it sends.

kombu's Redis channel wraps its connection pool in a new `redis.Redis` for each publish, each
received message's bookkeeping and each ack (`Channel.conn_or_acquire`): the client copies about
170 response callbacks into a case-insensitive dict every time, 0.1-0.15 ms of CPU on this
machine, on the first token's path in both the web (publish) and the worker (receive). A client
is only a thread-safe handle on the pool, so one per channel and pool serves them all.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis


class Channel(redis.Channel):
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:  # the consumer's BRPOP client: kombu already keeps one
            return super()._create_client(asynchronous=True)
        client = self._sync_client
        # A channel that reconnects builds a new pool; the client must follow it.
        if client is None or client.connection_pool is not self.pool:
            client = self._sync_client = super()._create_client()
        return client


class Transport(redis.Transport):
    Channel = Channel
