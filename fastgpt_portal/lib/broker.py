"""Celery's Redis transport, without a new redis-py client for every command it sends, and the
portal's one hot task published without apply_async().

kombu's Redis channel wraps its connection pool in a new `redis.Redis` for each publish, each
received message's bookkeeping and each ack (`Channel.conn_or_acquire`): the client copies about
170 response callbacks into a case-insensitive dict every time, 0.1-0.15 ms of CPU on this
machine, on the first token's path in both the web (publish) and the worker (receive). A client
is only a thread-safe handle on the pool, so one per channel and pool serves them all.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.utils.saferepr import saferepr
from kombu.transport import redis


class Channel(redis.Channel):
    _sync_client: Any = None
    # While publish() learns a task's message: what kombu would push, kept instead.
    _capture: list[tuple[str, dict]] | None = None

    def _put(self, queue: str, message: dict, **kwargs: Any) -> None:
        if self._capture is not None:
            self._capture.append((queue, message))
            return
        super()._put(queue, message, **kwargs)

    def _put_all(self, captured: list[tuple[str, dict]]) -> None:
        for queue, message in captured:
            super()._put(queue, message)

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


# ---------------------------------------------------------------------------- lean publishing

# Celery's apply_async() costs the web process 0.8 ms of CPU per task on this machine, of which
# the Redis write is 0.06 ms: settings lookups, routing, the producer's retry wrapper, the queue
# declaration check (bench/RESULTS.md, 2026-12-05). Each turn is one such task, and its publish
# is on the first token's path. With positional arguments only, the message differs from call
# to call in its ids and arguments alone. So Celery writes the first message of a process for
# each task (captured by the channel instead of sent, then sent by us), and the rest are copies
# of it with new ids and arguments, pushed with one LPUSH however many there are.


@dataclass(frozen=True, slots=True)
class _Template:
    client: Any  # the channel's client: thread-safe, and it reconnects by itself
    key: str  # the Redis list: the routed queue, with kombu's priority suffix if any
    headers: dict[str, Any]
    properties: dict[str, Any]
    envelope: dict[str, Any]  # content type and encoding
    embed: dict[str, Any]
    argsrepr_maxsize: int


# task name -> (pid, its template, or None where Celery sends every message: see _learn)
_templates: dict[str, tuple[int, _Template | None]] = {}


def _learn(task: Task, producer: Any, args: tuple[Any, ...]) -> _Template | None:
    """Send task(*args) the Celery way, and keep its message as the template for the next."""
    channel = producer.channel
    if not isinstance(channel, Channel) or task.app.conf.task_send_sent_event:
        task.apply_async(args, producer=producer)  # another transport, or task-sent events
        return None
    captured = channel._capture = []
    try:
        task.apply_async(args, producer=producer)
    finally:
        channel._capture = None
    channel._put_all(captured)
    if len(captured) != 1:
        return None  # routed to several queues
    queue, message = captured[0]
    if channel._expires and queue in channel._expires:
        return None  # a queue with an expiry needs kombu's PEXPIRE with every push
    if message["properties"].get("body_encoding") != "base64":
        return None
    _args, _kwargs, embed = json.loads(base64.b64decode(message["body"]))
    return _Template(
        client=channel._create_client(),
        key=channel._q_for_pri(queue, channel._get_message_priority(message, reverse=False)),
        headers=message["headers"],
        properties=message["properties"],
        envelope={k: v for k, v in message.items() if k not in ("body", "headers", "properties")},
        embed=embed,
        argsrepr_maxsize=task.app.amqp.argsrepr_maxsize,
    )


def _message(template: _Template, args: tuple[Any, ...]) -> bytes:
    task_id = str(uuid.uuid4())
    body = json.dumps([list(args), {}, template.embed]).encode()
    headers = dict(template.headers, id=task_id, root_id=task_id)
    # What Celery's saferepr gives for integers, at a tenth of the cost.
    simple = all(type(arg) is int for arg in args)
    headers["argsrepr"] = repr(args) if simple else saferepr(args, template.argsrepr_maxsize)
    properties = dict(template.properties, correlation_id=task_id, delivery_tag=str(uuid.uuid4()))
    message = {
        "body": base64.b64encode(body).decode(),
        **template.envelope,
        "headers": headers,
        "properties": properties,
    }
    return json.dumps(message).encode()


def publish(task: Task, calls: list[tuple[Any, ...]]) -> None:
    """task.apply_async(args) for each args in `calls`, in order: a process's first through
    Celery, the rest as copies of its message, in one Redis command. Positional arguments only.
    Celery's publish signals fire for that first message only (the portal connects none)."""
    pid = os.getpid()
    learned = _templates.get(task.name)
    if learned is None or learned[0] != pid or learned[1] is None:
        with task.app.producer_or_acquire() as producer:
            if learned is None or learned[0] != pid:
                first, *calls = calls
                learned = _templates[task.name] = (pid, _learn(task, producer, tuple(first)))
            if learned[1] is None:
                for args in calls:
                    task.apply_async(args, producer=producer)
                return
    template = learned[1]
    if calls:
        # LPUSH q m1 m2 leaves m1 at the tail, where the worker's BRPOP takes first.
        template.client.lpush(template.key, *[_message(template, tuple(a)) for a in calls])
