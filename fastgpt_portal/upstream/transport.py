"""An httpx transport that reads every FastGPT answer of a process on one asyncio loop.

With httpx's own transport each streaming answer is a thread blocked in recv(): every token
wakes that thread, which then parses HTTP in pure Python (h11) under the GIL. Here one loop
thread per process holds every connection (aiohttp: epoll and a C HTTP parser). An answer's
bytes reach its reader either through a queue (iterating the response, as httpx does; a reader
that wakes late takes all that is queued at once) or, through the PUSH extension, by a callback
on the loop thread itself, so no thread wakes per token at all: the worker's way.

400 answers paced at 20 tokens/s, read by upstream.client in 400 threads (2026-11-29, this
2-core machine, CPU of the reading process per token): httpx's transport 263-281 us, this
one iterated 141-145 us, pushed 94-101 us.

It is a transport, not a second client: upstream.client keeps its request building, error
mapping and retries, because this module raises the same httpx exceptions httpx's transport
does (a timeout is httpx.ReadTimeout, a dropped connection httpx.RemoteProtocolError, ...),
and its tests run on both.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx

log = logging.getLogger(__name__)

_END = object()
# A body's reader wakes at most this much later than its loop gave up (a loop that died);
# the loop's own read timeout fires first.
_GRACE_S = 5.0


# ---------------------------------------------------------------------------- the loop thread

_loop: tuple[int, asyncio.AbstractEventLoop] | None = None
_loop_lock = threading.Lock()
_open_transports: weakref.WeakSet[LoopTransport] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    # aiohttp logs an open session or connector at exit as an error ("Unclosed connector").
    for transport in list(_open_transports):
        transport.close()


def http_loop() -> asyncio.AbstractEventLoop:
    """This process's loop for upstream HTTP, started on first use (again after a fork)."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            try:
                import uvloop

                loop = uvloop.new_event_loop()
            except ImportError:  # pragma: no cover - uvloop is a dependency; Windows lacks it
                loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="fastgpt-http", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


# ---------------------------------------------------------------------------- errors


def _mapped(exc: BaseException, ctx: SimpleNamespace | None = None) -> Exception:
    """The httpx exception httpx's own transport raises for the same failure; `ctx` (the
    request's trace context) tells a wait for a pooled connection from a slow connect."""
    if isinstance(exc, httpx.HTTPError):
        return exc
    message = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        if ctx is not None and ctx.queued and not ctx.dequeued:
            return httpx.PoolTimeout(message)
        return httpx.ConnectTimeout(message)
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError | TimeoutError):
        return httpx.ReadTimeout(message)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # httpx says "[Errno 111] Connection refused"; aiohttp wraps that in a longer sentence.
        return httpx.ConnectError(str(exc.os_error) or message)
    if isinstance(exc, aiohttp.NonHttpUrlClientError):
        return httpx.UnsupportedProtocol(message)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.InvalidURL(message)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientResponseError):  # not HTTP: a bad status line or header
        return httpx.RemoteProtocolError(message)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return httpx.ReadError(message)
    return exc if isinstance(exc, Exception) else RuntimeError(message)


# ---------------------------------------------------------------------------- body


# A response's extension: push(feed) reads the rest of the body on the loop thread, calling
# feed(chunk) there for each piece (no thread wake per piece); feed returns True to stop. It
# returns True if feed stopped it, False at the end of the body, and raises what reading or
# feed raised. upstream.client uses it for answers; anything else can read the body as usual.
PUSH = "fastgpt_portal.push"

Feed = Callable[[bytes], bool]


class _Body(httpx.SyncByteStream):
    """An answer's bytes as its loop reads them: each wake takes all that has arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float | None) -> None:
        self._chunks: queue.SimpleQueue = queue.SimpleQueue()
        self._loop = loop
        self._task: asyncio.Task | None = None
        self._read_timeout = read_timeout
        self._timeout = None if read_timeout is None else read_timeout + _GRACE_S
        self._last_read = 0.0  # loop time of the last chunk (see _watch)
        self._watchdog: asyncio.TimerHandle | None = None
        self._done = False
        # Set on the loop by push(): chunks go to _feed there, the outcome to _pushed.
        self._feed: Feed | None = None
        self._pushed: Future | None = None

    def __iter__(self) -> Iterator[bytes]:
        get, empty = self._chunks.get, self._chunks.empty
        while not self._done:
            try:
                item = get(timeout=self._timeout)
            except queue.Empty:
                self.close()
                raise httpx.ReadTimeout("the answer's reader got nothing from its loop") from None
            data: list[bytes] = []
            while True:
                if item is _END:
                    self._done = True
                    break
                if isinstance(item, BaseException):
                    self._done = True
                    if data:
                        yield b"".join(data)
                    raise item
                data.append(item)
                if empty():
                    break
                item = get()
            if data:
                yield data[0] if len(data) == 1 else b"".join(data)

    def push(self, feed: Feed) -> bool:
        if self._done:
            raise RuntimeError("the body was read or closed already")
        pushed: Future = Future()
        self._loop.call_soon_threadsafe(self._start_push, feed, pushed)
        try:
            return pushed.result()
        finally:
            self._done = True

    def close(self) -> None:
        # Before the end: cancel the read, which closes the connection (FastGPT v1 stops the
        # workflow when its client goes, fastgpt-api.md §8.15) instead of pooling it.
        if not self._done and self._task is not None:
            self._done = True
            self._loop.call_soon_threadsafe(self._task.cancel)

    # On the loop.

    def _start_push(self, feed: Feed, pushed: Future) -> None:
        # What the pump queued before push() was called goes first, in order.
        while not self._chunks.empty():
            item = self._chunks.get_nowait()
            if item is _END or isinstance(item, BaseException):
                _conclude(pushed, item)
                return
            stop = _fed(feed, item)
            if stop is not False:
                if self._task is not None:
                    self._task.cancel()  # closes the connection
                _conclude(pushed, stop)
                return
        self._feed, self._pushed = feed, pushed

    def _end(self, outcome: object) -> None:
        """The body has ended (_END) or failed (an exception): tell push() or the reader."""
        if self._pushed is not None:
            _conclude(self._pushed, outcome)
        else:
            self._chunks.put(outcome)

    def _watch(self, response: aiohttp.ClientResponse) -> None:
        """The body's read timeout, from here on, on one timer that wakes once per timeout.

        aiohttp times each read by cancelling and restarting a timer for every chunk: 7% of the
        worker's CPU at 500 streams (bench/RESULTS.md, 2026-12-05). Here a chunk only notes the
        time; the timer, when it fires, fails the read or sets itself again for the rest.
        aiohttp's own timer covers the wait for the headers, and the first gap after them.
        """
        protocol = response.connection.protocol if response.connection else None
        if not self._read_timeout or protocol is None:
            return
        protocol.read_timeout = None  # aiohttp's timer: none after its pending one
        self._last_read = self._loop.time()
        self._check(response)

    def _check(self, response: aiohttp.ClientResponse) -> None:
        assert self._read_timeout is not None
        quiet_until = self._last_read + self._read_timeout
        if self._loop.time() < quiet_until:
            self._watchdog = self._loop.call_at(quiet_until, self._check, response)
        else:
            self._watchdog = None
            response.content.set_exception(
                aiohttp.SocketTimeoutError("Timeout on reading data from socket")
            )

    async def pump(self, response: aiohttp.ClientResponse) -> None:
        put = self._chunks.put
        loop = self._loop
        try:
            self._watch(response)
            content = response.content
            while chunk := await content.readany():
                self._last_read = loop.time()
                feed = self._feed
                if feed is None:
                    put(chunk)
                    continue
                stop = _fed(feed, chunk)
                if stop is not False:
                    response.close()
                    assert self._pushed is not None
                    _conclude(self._pushed, stop)
                    return
        except asyncio.CancelledError:
            response.close()
            if self._pushed is not None:
                # Cancelled from elsewhere (close() from another thread): push() must not wait on.
                _conclude(self._pushed, httpx.ReadError("the HTTP loop closed the answer"))
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the reader
            response.close()
            self._end(_mapped(exc))
        else:
            response.release()  # read to the end: the connection goes back to the pool
            self._end(_END)
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()


# ---------------------------------------------------------------------------- transport


def _fed(feed: Feed, chunk: bytes) -> object:
    """feed(chunk): False to read on, True to stop, or the exception it raised."""
    try:
        return feed(chunk)
    except BaseException as exc:  # noqa: BLE001 - it is push()'s caller's to handle
        return exc


def _conclude(pushed: Future, outcome: object) -> None:
    """push()'s result, once: False at the body's end (_END), True when feed stopped it, or the
    exception that reading or feed raised."""
    if pushed.done():
        return
    if isinstance(outcome, BaseException):
        pushed.set_exception(outcome)
    else:
        pushed.set_result(outcome is not _END)


async def _on_create(_session: Any, ctx: SimpleNamespace, _params: Any) -> None:
    trace = ctx.trace_request_ctx.trace
    if trace is not None:
        # upstream.client only resends a question whose connection was reused, never a new one.
        trace("connection.connect_tcp.started", {})


async def _on_queued(_session: Any, ctx: SimpleNamespace, _params: Any) -> None:
    ctx.trace_request_ctx.queued = True


async def _on_dequeued(_session: Any, ctx: SimpleNamespace, _params: Any) -> None:
    ctx.trace_request_ctx.dequeued = True


class LoopTransport(httpx.BaseTransport):
    """httpx.BaseTransport over aiohttp on http_loop(); use it as httpx.Client(transport=...)."""

    def __init__(
        self, *, max_connections: int = 2000, keepalive_expiry: float = 2.0, verify: bool = True
    ) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._verify = verify
        self._loop = http_loop()
        self._session: aiohttp.ClientSession | None = None
        _open_transports.add(self)

    def _new_session(self) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_connection_create_start.append(_on_create)
        trace.on_connection_queued_start.append(_on_queued)
        trace.on_connection_queued_end.append(_on_dequeued)
        # httpx's TLS settings (certifi, SSL_CERT_FILE), so an https FastGPT verifies the same.
        context: ssl.SSLContext | bool = httpx.create_ssl_context() if self._verify else False
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_expiry,
            ssl=context,
        )
        return aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # httpx decodes, from the headers it is given
            trace_configs=[trace],
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        )

    async def _open(
        self,
        request: httpx.Request,
        limits: aiohttp.ClientTimeout,
        ctx: SimpleNamespace,
        body: _Body,
    ) -> aiohttp.ClientResponse:
        if self._session is None:
            self._session = self._new_session()
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() != b"host"  # aiohttp writes Host from the URL, as httpx did
        ]
        response = await self._session.request(
            request.method,
            str(request.url),
            data=request.content or None,
            headers=headers,
            allow_redirects=False,
            timeout=limits,
            trace_request_ctx=ctx,
        )
        body._task = self._loop.create_task(body.pump(response))
        return response

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"Request URL has an unsupported protocol '{request.url.scheme}://'."
            )
        request.read()
        timeouts = request.extensions.get("timeout") or {}
        connect, pool = timeouts.get("connect"), timeouts.get("pool")
        limits = aiohttp.ClientTimeout(
            total=None,
            connect=None if connect is None or pool is None else connect + pool,
            sock_connect=connect,
            sock_read=timeouts.get("read"),
        )
        ctx = SimpleNamespace(trace=request.extensions.get("trace"), queued=False, dequeued=False)
        body = _Body(self._loop, timeouts.get("read"))
        opening = self._open(request, limits, ctx, body)
        opened: Future = asyncio.run_coroutine_threadsafe(opening, self._loop)
        try:
            response = opened.result()
        except BaseException as exc:
            if not opened.done():  # interrupted while waiting: drop the request
                self._loop.call_soon_threadsafe(opened.cancel)
                raise
            raise _mapped(exc, ctx) from None
        return httpx.Response(
            response.status,
            headers=[(k, v) for k, v in response.raw_headers],
            stream=body,
            extensions={
                PUSH: body.push,
                "http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode(),
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and not self._loop.is_closed():
            try:
                asyncio.run_coroutine_threadsafe(session.close(), self._loop).result(5)
            except Exception:  # noqa: BLE001 - closing is best effort at shutdown
                log.debug("closing the upstream HTTP session failed", exc_info=True)
