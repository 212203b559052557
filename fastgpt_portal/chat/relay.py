"""The Redis stream that carries one turn's answer from the worker to any number of browsers.

Each turn has a capped stream `portal:turn:<pk>` with a TTL. Entries are {"e": event, "d": data};
events: delta (answer text), reasoning, status (a node's name), done (the turn has finished and
the database holds the final state). A browser that reconnects resumes after the last id it saw.

Both ends are built for a thousand answers streaming at once through one worker process and one
web process (bench/RESULTS.md has the measurements):

- Writes: every turn in a worker process hands its events to one writer thread, which sends all
  that has queued up, for every turn, in one pipelined round trip, merging each turn's adjacent
  deltas into one entry. A redis-py call per token costs more CPU than everything else per token.
- Reads: every SSE connection of a web process is served by one blocking XREAD over all the
  streams they follow (StreamHub), instead of one XREAD and one Redis connection each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

try:
    import hiredis
except ImportError:  # pragma: no cover - a locked dependency; without it _CPacking is unused
    hiredis = None

from fastgpt_portal.lib.mixins import mixed_in

log = logging.getLogger("fastgpt_portal.chat")

STREAM_MAXLEN = 20_000

_sync_client: redis.Redis | None = None
_sync_lock = threading.Lock()
_async_clients: dict[int, aioredis.Redis] = {}

Entry = tuple[str, dict[str, str]]  # (stream id, fields)


def stream_key(turn_pk: int, data_id: str) -> str:
    # Keyed by the try's data_id too, so a Retry (a new data_id) or a turn whose pk a restored
    # or test database reuses always starts on an empty stream: nothing needs deleting.
    return f"portal:turn:{turn_pk}:{data_id}"


def cancel_key(turn_pk: int, data_id: str) -> str:
    return f"portal:cancel:{turn_pk}:{data_id}"


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


_packer = HiredisRespSerializer()


def _c_packed(args: tuple[Any, ...]) -> list[bytes]:
    """One command as RESP bytes, packed by hiredis (C); needs HIREDIS_AVAILABLE.

    A plain command name and plain arguments go to hiredis as they are: redis-py's serializer
    first looks at every argument in Python for buffers to copy, 40% of the hub's XREAD at 1,000
    streams. Anything else ("CLIENT ID" in one string, a buffer) takes redis-py's way.
    """
    if args[0].__class__ is str and args[0].isalpha():
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
    return _packer.pack(*args)


class _CPacking:
    """Connection mixin: commands packed by hiredis (C), as redis-py's sync client does.

    redis.asyncio (8.1) packs every command in Python, and the hub's XREAD names every followed
    stream: at 1,000 streams that read took 5.7 ms to pack, 1.1 ms this way (same bytes).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        return _c_packed(args)


def _with_c_packing(client: aioredis.Redis) -> aioredis.Redis:
    pool = client.connection_pool
    cls = pool.connection_class  # TCP, TLS or a Unix socket, as the URL says
    if HIREDIS_AVAILABLE and not issubclass(cls, _CPacking):
        pool.connection_class = mixed_in(_CPacking, cls)
    return client


def async_redis() -> aioredis.Redis:
    """One client per event loop: redis.asyncio connections belong to the loop that made them."""
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        client = _with_c_packing(
            aioredis.Redis.from_url(
                settings.REDIS_URL,
                decode_responses=True,
                max_connections=10_000,
                socket_timeout=30,
                socket_connect_timeout=5,
            )
        )
        _async_clients[loop_id] = client
    return client


# ---------------------------------------------------------------------------- writing


def coalesce_window(streams: int) -> float:
    """Seconds between Redis writes (worker) or reads (web) while `streams` answers stream.

    PORTAL_COALESCE_MS for a few streams, growing with their number up to
    PORTAL_COALESCE_MAX_MS: each write and each read costs the same whatever it carries, and
    the hub's read names every stream, so under load a longer window makes each carry more.
    A 20-token/s answer is one token per 50 ms: at 150 ms a browser gets three per write.
    """
    base = settings.PORTAL_COALESCE_MS / 1000
    return max(base, min(base * streams / 50, settings.PORTAL_COALESCE_MAX_MS / 1000))


class _Writer:
    """One thread per process that writes every turn's queued events in one round trip.

    publish() only appends to a queue, so a turn's thread goes straight back to reading
    FastGPT; while the writer waits for Redis, the next events of all turns pile up and go out
    together. Events keep their order per stream: one batch is written at a time. A failed
    write is raised to the turn at its next publish (or flush), as a direct write would have
    been.

    A turn's first token is the exception: the turn's own thread writes it, with whatever has
    queued up, before it reads on. Handed to the writer thread it waited for the GIL, which the
    turn's thread keeps while it parses the rest of a burst from FastGPT: up to the 5 ms switch
    interval, and 4 ms of the first token's time in `make bench` (bench/RESULTS.md).
    """

    RECENT_SECONDS = 2.0  # a stream written within this counts as streaming

    def __init__(self) -> None:
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # the writer waits here for events
        self._written = threading.Condition(lock)  # flush() waits here for writes
        self._queue: deque[tuple[str, list[tuple[str, str]]]] = deque()
        self._errors: dict[str, Exception] = {}
        self._sent = 0  # batches written, for flush()
        self._taken = 0
        self._thread: threading.Thread | None = None
        self._last_write = 0.0  # monotonic time the last batch was taken
        self._urgent = False  # a first answer token is queued: write it now
        self._writing = False  # a batch is being written, by the writer or a first token's turn
        # Only the thread writing a batch touches these three.
        self._seen: dict[str, float] = {}  # stream key -> when it was last written
        self._ttl_set: dict[str, float] = {}  # stream key -> when its TTL was last set
        self._pruned = 0.0

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="relay-writer", daemon=True)
            self._thread.start()

    def submit(self, key: str, entries: list[tuple[str, str]], urgent: bool = False) -> int:
        """Queue entries for `key`; returns a ticket that flush() can wait for. `urgent`
        entries (a turn's first token) are written at once, whatever the window: by the
        calling thread unless a write is under way (then right after it)."""
        with self._work:
            error = self._errors.pop(key, None)
            if error is not None:
                raise error
            self._ensure_thread()
            self._queue.append((key, entries))
            ticket = self._taken + len(self._queue)
            if not urgent:
                if len(self._queue) == 1:
                    self._work.notify()  # the writer sleeps only on an empty queue or a window
                return ticket
            if self._writing:
                self._urgent = True
                self._work.notify()
                return ticket
            batch = self._take()
        self._write_batch(batch)
        return ticket

    def flush(self, ticket: int, key: str, timeout: float = 10.0) -> None:
        """Wait until everything up to `ticket` is written; raise the write's error, if any."""
        deadline = time.monotonic() + timeout
        with self._written:
            while self._sent < ticket:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise redis.TimeoutError("the relay writer did not write in time")
                self._written.wait(left)
            error = self._errors.pop(key, None)
        if error is not None:
            raise error

    def _take(self) -> list[tuple[str, list[tuple[str, str]]]]:
        """Everything queued, as the next batch to write (the lock is held)."""
        batch = list(self._queue)
        self._queue.clear()
        self._taken += len(batch)
        self._last_write = time.monotonic()
        self._urgent = False
        self._writing = True
        return batch

    def _write_batch(self, batch: list[tuple[str, list[tuple[str, str]]]]) -> None:
        try:
            self._write(batch)
        except Exception as exc:
            log.warning("relay: writing %d event batches to Redis failed: %s", len(batch), exc)
            with self._work:
                for key, _ in batch:
                    self._errors[key] = exc
                    self._ttl_set.pop(key, None)  # set it again with the next write
        with self._written:
            self._sent += len(batch)
            self._writing = False
            self._written.notify_all()
            if self._queue:
                self._work.notify()  # the writer may be waiting for this write to end

    def _loop(self) -> None:
        while True:
            with self._work:
                while not self._queue or self._writing:
                    self._work.wait()
                # While several turns stream, at most one write per window: the events of
                # every turn pile up and go out in one pipelined write, instead of a round
                # trip per token. A lone turn, and any turn's first token, is not held.
                streams = len(self._seen)
                if streams > 1:
                    deadline = self._last_write + coalesce_window(streams)
                    while not self._urgent and (left := deadline - time.monotonic()) > 0:
                        self._work.wait(left)
                    if self._writing or not self._queue:
                        continue  # a first token's turn took the queue meanwhile
                batch = self._take()
            self._write_batch(batch)

    def _write(self, batch: list[tuple[str, list[tuple[str, str]]]]) -> None:
        by_key: dict[str, list[tuple[str, str]]] = {}
        for key, entries in batch:
            merged = by_key.setdefault(key, [])
            for event, data in entries:
                if event == "delta" and merged and merged[-1][0] == "delta":
                    # Deltas that queued up together reach the browser together anyway.
                    merged[-1] = ("delta", merged[-1][1] + data)
                else:
                    merged.append((event, data))
        commands: list[tuple[Any, ...]] = []
        ttl = settings.PORTAL_STREAM_TTL_SECONDS
        now = time.monotonic()
        for key, entries in by_key.items():
            for event, data in entries:
                commands.append(
                    ("XADD", key, "MAXLEN", "~", STREAM_MAXLEN, "*", "e", event, "d", data)
                )
            # The TTL once per stream, and again only if it streams for a tenth of it: an
            # EXPIRE with every write was half the commands.
            if now - self._ttl_set.get(key, -ttl) >= ttl / 10:
                commands.append(("EXPIRE", key, ttl))
                self._ttl_set[key] = now
            self._seen[key] = now
        if now - self._pruned > 1.0:
            self._pruned = now
            self._seen = {k: t for k, t in self._seen.items() if now - t < self.RECENT_SECONDS}
            self._ttl_set = {k: t for k, t in self._ttl_set.items() if k in self._seen}
        _pipelined(sync_redis(), commands)


def _pipelined(client: redis.Redis, commands: list[tuple[Any, ...]]) -> None:
    """Send `commands` in one round trip and read every reply, as redis-py's pipeline without
    a transaction does (the first error reply is raised once every reply is read), but each
    command packed by hiredis in C: the pipeline builds and packs each XADD in Python, 6.1 us
    of CPU an entry here against 1.5 this way, and at 1,000 streams the writer sends about
    6,000 a second (bench/RESULTS.md).
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    error: redis.ResponseError | None = None
    try:
        if HIREDIS_AVAILABLE:
            packed = [b"".join([chunk for command in commands for chunk in _c_packed(command)])]
        else:  # pragma: no cover - hiredis is a locked dependency
            packed = conn.pack_commands(commands)
        conn.send_packed_command(packed)
        for _ in commands:
            try:
                conn.read_response()
            except redis.ResponseError as exc:
                error = error or exc
    except BaseException:
        conn.disconnect()  # replies may be left unread on it
        raise
    finally:
        pool.release(conn)
    if error is not None:
        raise error


_writer = _Writer()


class Publisher:
    """Writes one turn's events, through the process's writer (see _Writer)."""

    def __init__(self, turn_pk: int, data_id: str) -> None:
        self.key = stream_key(turn_pk, data_id)
        self.cancel_key = cancel_key(turn_pk, data_id)
        self._ticket = 0

    def publish(self, entries: list[tuple[str, str]], urgent: bool = False) -> None:
        if entries:
            self._ticket = _writer.submit(self.key, entries, urgent)

    def flush(self) -> None:
        """Block until this turn's events so far are in Redis."""
        if self._ticket:
            _writer.flush(self._ticket, self.key)


def read_answer(turn_pk: int, data_id: str) -> tuple[str, str]:
    """The answer and reasoning text a turn's stream holds (empty if it expired)."""
    answer: list[str] = []
    reasoning: list[str] = []
    for _, fields in sync_redis().xrange(stream_key(turn_pk, data_id)):
        if fields.get("e") == "delta":
            answer.append(fields.get("d", ""))
        elif fields.get("e") == "reasoning":
            reasoning.append(fields.get("d", ""))
    return "".join(answer), "".join(reasoning)


def request_cancel(turn_pk: int, data_id: str) -> None:
    sync_redis().set(cancel_key(turn_pk, data_id), "1", ex=settings.PORTAL_STREAM_TTL_SECONDS)


def publish_done(turn_pk: int, data_id: str) -> None:
    """The last event, written before returning: the database already holds the final state."""
    publisher = Publisher(turn_pk, data_id)
    publisher.publish([("done", "")])
    publisher.flush()


# ---------------------------------------------------------------------------- reading


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Subscription:
    """One SSE connection's view of one stream: entries after `cursor`, in order, once."""

    def __init__(self, hub: StreamHub, key: str, cursor: str) -> None:
        self.hub = hub
        self.key = key
        self.cursor = _id_tuple(cursor)
        self._pending: list[Entry] = []
        self._waiter: asyncio.Future[None] | None = None  # get() waiting for entries
        self._stash: list[Entry] | None = None  # while catching up: hub entries held back

    def _push(self, entries: list[Entry]) -> None:
        if self._stash is not None:
            self._stash.extend(entries)
            return
        self._pending.extend(entries)
        _wake(self._waiter)

    async def get(self, wait: float) -> list[Entry]:
        """The entries that arrived since the last call; [] after `wait` seconds of quiet."""
        if not self._pending:
            # A future and a timer, not asyncio.wait_for(Event.wait()): every open answer
            # stream waits here once per delivery, and wait_for's timeout context was a tenth
            # of the web process's CPU at 500 streams (bench/RESULTS.md, 2026-12-05).
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = loop.call_later(wait, _wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
            if not self._pending:
                return []
        entries, self._pending = self._pending, []
        fresh = []
        for entry in entries:
            ident = _id_tuple(entry[0])
            if ident > self.cursor:  # the hub may hand over what a catch-up read already had
                self.cursor = ident
                fresh.append(entry)
        return fresh

    def close(self) -> None:
        self.hub._unsubscribe(self)


class StreamHub:
    """Follows many streams with one blocking XREAD on a connection of its own.

    Each SSE connection subscribes to its turn's stream; the hub reads every followed stream
    from the furthest point it has delivered and hands the entries to the subscribers. A new
    stream interrupts the blocking read (CLIENT UNBLOCK), so it is read at once. One hub per
    event loop: redis.asyncio connections belong to the loop that made them.
    """

    BLOCK_MS = 10_000

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._cursors: dict[str, str] = {}
        self._reader: aioredis.Redis | None = None
        self._reader_id: int | None = None
        self._task: asyncio.Task | None = None
        self._blocked = False
        self._generation = 0  # one per XREAD sent
        self._unblocking = -1  # the generation a CLIENT UNBLOCK was sent for

    async def subscribe(self, key: str, cursor: str) -> Subscription:
        sub = Subscription(self, key, cursor)
        followers = self._subs.get(key)
        if not followers:
            self._subs[key] = {sub}
            self._cursors[key] = cursor
            await self._kick()
            return sub
        # The hub already follows this stream from further on: read the gap first, holding
        # back what the hub delivers meanwhile, so entries stay in order.
        sub._stash = []
        followers.add(sub)
        try:
            gap = await async_redis().xrange(key, min=f"({cursor}" if cursor != "0-0" else "-")
        except BaseException:
            self._unsubscribe(sub)
            raise
        stash, sub._stash = sub._stash, None
        sub._push(gap + stash)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        followers = self._subs.get(sub.key)
        if followers is not None:
            followers.discard(sub)
            if not followers:
                del self._subs[sub.key]
                self._cursors.pop(sub.key, None)

    async def _kick(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="stream-hub")
        elif self._blocked and self._unblocking != self._generation:
            # The running XREAD does not name the new stream: end it now, so the new stream's
            # first entries are not held up until some other stream has news. The UNBLOCK can
            # overtake an XREAD still on its way to Redis; then it finds nothing to unblock and
            # is sent again.
            generation = self._unblocking = self._generation
            try:
                for _ in range(50):
                    done = await async_redis().execute_command("CLIENT", "UNBLOCK", self._reader_id)
                    if done or not self._blocked or self._generation != generation:
                        break
                    await asyncio.sleep(0.001)
            except Exception:
                log.warning("stream hub: CLIENT UNBLOCK failed", exc_info=True)

    async def _connect(self) -> None:
        # No socket timeout shorter than the block, and a connection of its own for the read.
        self._reader = _with_c_packing(
            aioredis.Redis.from_url(
                settings.REDIS_URL,
                decode_responses=True,
                single_connection_client=True,
                socket_timeout=self.BLOCK_MS / 1000 + 20,
                socket_connect_timeout=5,
            )
        )
        self._reader_id = int(await self._reader.client_id())

    async def _run(self) -> None:
        while self._subs:
            try:
                if self._reader is None:
                    await self._connect()
                assert self._reader is not None
                streams = dict(self._cursors)
                read_at = time.monotonic()
                self._generation += 1
                self._blocked = True
                try:
                    # XREAD without redis-py's xread(): it builds the same arguments in Python.
                    response = await self._reader.execute_command(
                        "XREAD", "BLOCK", self.BLOCK_MS, "STREAMS", *streams, *streams.values()
                    )
                finally:
                    self._blocked = False
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream hub: reading the answer streams failed; retrying")
                if self._reader is not None:
                    try:
                        await self._reader.aclose()
                    except Exception:
                        log.debug("stream hub: closing the reader failed", exc_info=True)
                self._reader = None
                await asyncio.sleep(0.5)
                continue
            for key, entries in response or []:
                if not entries or key not in self._subs:
                    continue
                if self._cursors.get(key) != streams[key]:
                    # Its followers left and a new one came, from another point, while this
                    # read was out (a browser reconnecting with Last-Event-ID): what this read
                    # brings may skip entries the new one has not had. The next read starts
                    # from the new point.
                    continue
                self._cursors[key] = entries[-1][0]
                for sub in list(self._subs.get(key, ())):
                    sub._push(entries)
            if response and len(response) > 1:
                # Several streams are busy: at most one read per window, so each brings the
                # entries of many. Every XREAD names every followed stream: one read per entry
                # would cost O(streams) per token. A lone stream is never held.
                wait = read_at + coalesce_window(len(self._subs)) - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)


_hubs: dict[int, StreamHub] = {}


def stream_hub() -> StreamHub:
    loop_id = id(asyncio.get_running_loop())
    hub = _hubs.get(loop_id)
    if hub is None:
        hub = _hubs[loop_id] = StreamHub()
    return hub
