"""A small HTTP/1.1 client on raw asyncio protocols, for load generation.

httpx spends about a core on a thousand event streams; the benchmark client must not be the
bottleneck it measures, so this one parses only what the benchmark needs: a status line, headers,
a body framed by Content-Length, chunked encoding or the connection's end, and server-sent events.
Every event is stamped with time.monotonic() as its bytes arrive (CLOCK_MONOTONIC is shared by
all processes on the machine, so stamps compare across the client, the double and the stack).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# One SSE event: (monotonic time its last byte arrived, event name, data, id).
SSEEvent = tuple[float, str, str, str]


@dataclass(slots=True)
class Response:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    headers_at: float = 0.0


class _Protocol(asyncio.Protocol):
    """Reads one response; hands body bytes to `on_body` as they arrive (de-chunked)."""

    def __init__(self, on_body: Callable[[bytes, float], None] | None) -> None:
        self.on_body = on_body
        self.response = Response()
        self.done: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._state = "head"  # head | length | chunked | close
        self._remaining = 0
        self._body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._buf += data
        try:
            self._parse(now)
        except Exception as exc:  # a malformed response ends this request, not the client
            if not self.done.done():
                self.done.set_exception(exc)
            if self.transport is not None:
                self.transport.close()

    def _deliver(self, chunk: bytes, now: float) -> None:
        if self.on_body is not None:
            self.on_body(chunk, now)
        else:
            self._body += chunk

    def _finish(self) -> None:
        if not self.done.done():
            self.response.body = bytes(self._body)
            self.done.set_result(self.response)
        if self.transport is not None:
            self.transport.close()

    def _parse(self, now: float) -> None:
        buf = self._buf
        if self._state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            del buf[: end + 4]
            self.response.status = int(lines[0].split(" ", 2)[1])
            self.response.headers_at = now
            headers = self.response.headers
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                self._state = "chunked"
            elif "content-length" in headers:
                self._state = "length"
                self._remaining = int(headers["content-length"])
            else:
                self._state = "close"
            if self._state == "length" and self._remaining == 0:
                self._finish()
                return
        if self._state == "length":
            take = bytes(buf[: self._remaining])
            del buf[: len(take)]
            self._remaining -= len(take)
            if take:
                self._deliver(take, now)
            if self._remaining == 0:
                self._finish()
        elif self._state == "close":
            if buf:
                self._deliver(bytes(buf), now)
                buf.clear()
        else:
            pieces = []
            while True:
                if self._remaining:
                    take = bytes(buf[: self._remaining])
                    del buf[: len(take)]
                    self._remaining -= len(take)
                    pieces.append(take)
                    if self._remaining:
                        break
                    continue
                # Each chunk is "<hex size>\r\n<data>\r\n"; the data's own CRLF is eaten here.
                if buf[:2] == b"\r\n":
                    del buf[:2]
                end = buf.find(b"\r\n")
                if end < 0:
                    break
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                if size == 0:
                    if pieces:
                        self._deliver(b"".join(pieces), now)
                    self._finish()
                    return
                if len(buf) < end + 2:
                    break
                del buf[: end + 2]
                self._remaining = size
            if pieces:
                self._deliver(b"".join(pieces), now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if self._state == "close":
                self._finish()
            else:
                self.done.set_exception(exc or ConnectionError("connection closed mid-response"))


def _request_bytes(
    method: str, host: str, port: int, path: str, headers: dict[str, str], body: bytes
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    *,
    on_body: Callable[[bytes, float], None] | None = None,
    time_limit: float = 60.0,
) -> Response:
    """One request on a fresh connection; with `on_body`, the body is streamed to it."""
    loop = asyncio.get_running_loop()
    transport, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: _Protocol(on_body), host, port), time_limit
    )
    try:
        transport.write(_request_bytes(method, host, port, path, headers or {}, body))
        return await asyncio.wait_for(protocol.done, time_limit)
    finally:
        transport.close()


class SSEParser:
    """Incremental server-sent events parser; calls on_event(event) for each complete event."""

    def __init__(self, on_event: Callable[[SSEEvent], None]) -> None:
        self.on_event = on_event
        self._buf = b""

    def feed(self, chunk: bytes, now: float) -> None:
        buf = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            block = buf[start:end]
            start = end + 2
            event, data, ident = "message", [], ""
            for line in block.split(b"\n"):
                if line.startswith(b"data:"):
                    data.append(line[6:] if line[5:6] == b" " else line[5:])
                elif line.startswith(b"event:"):
                    event = line[6:].strip().decode()
                elif line.startswith(b"id:"):
                    ident = line[3:].strip().decode()
            if data or event != "message":
                self.on_event((now, event, b"\n".join(data).decode("utf-8", "replace"), ident))
        self._buf = buf[start:]
