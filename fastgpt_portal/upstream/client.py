"""The only code that talks HTTP to FastGPT.

It streams one question to /api/v1/chat/completions, parses FastGPT's server-sent events into
the typed events of upstream.events, and turns every failure into an UpstreamError whose message
is a readable sentence and whose `permanent` flag says whether FastGPT may have run the question.
fastgpt-api.md (shared docs) describes the behaviour handled here; its §8 quirks are noted inline.

The key never appears in a log line, an exception message or a repr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import orjson
from django.views.decorators.debug import sensitive_variables

from fastgpt_portal.lib.mixins import mixed_in
from fastgpt_portal.upstream.events import (
    AnswerDelta,
    Event,
    Finished,
    FlowResponses,
    Interactive,
    NodeResponse,
    NodeStatus,
    ToolEvent,
    UpstreamError,
    Usage,
    VariablesUpdated,
    WorkflowDuration,
)
from fastgpt_portal.upstream.transport import PUSH, LoopTransport

log = logging.getLogger(__name__)

# The chatId FastGPT never saves (saveChat.ts): a check leaves no chat behind.
NO_RECORD_CHAT_ID = "NO_RECORD_HISTORIES"
_ERROR_BODY_LIMIT = 64 * 1024
_LOST = "The connection to FastGPT was lost during the answer."
_TOOL_EVENTS = frozenset({"toolCall", "toolParams", "toolResponse"})
# Users paste FastGPT's documented baseUrl (https://host/api) or even the endpoint itself.
_API_SUFFIX = re.compile(r"(/api(/v[12](/chat/completions)?)?)?/*$")
_RETRY_IN = re.compile(r"try again in (\d+(?:\.\d+)?) ?s", re.IGNORECASE)
_I18N_KEY = re.compile(r"^[\w-]+:[\w.-]+$")


@dataclass
class CheckResult:
    ok: bool
    kind: str  # "app" | "global" | "unknown"
    message: str  # a sentence for an administrator
    app_id: str = ""


# ---------------------------------------------------------------------------- shared HTTP client

_shared: tuple[int, httpx.Client] | None = None
_shared_lock = threading.Lock()


def shared_http() -> httpx.Client:
    """One pooled client per process, so connections to FastGPT are reused across tasks.

    httpx.Client is thread-safe. A forked worker gets its own: sockets must not be shared
    across processes.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared[0] != os.getpid():
            _shared = (os.getpid(), new_http())
        return _shared[1]


def new_http(keepalive_expiry: float = 2.0) -> httpx.Client:
    """An HTTP client for FastGPT: every answer read on this process's one HTTP loop.

    Requests through an HTTP(S)_PROXY from the environment keep httpx's own transport, with a
    pool that does not close connections under a request.
    """
    # keepalive_expiry (2 s) is well below Node's 5 s keep-alive: our idle clock starts when we
    # have read an answer, FastGPT's when it wrote it, and under load reading lags by seconds.
    # A socket reused as FastGPT closes it can lose an answer.
    max_connections = 2000
    client = httpx.Client(
        transport=LoopTransport(max_connections=max_connections, keepalive_expiry=keepalive_expiry),
        limits=httpx.Limits(  # for the proxies' transports
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        ),
        follow_redirects=False,
        headers={"User-Agent": "fastgpt-portal"},
    )
    return keep_assigned_pools(client)


def keep_assigned_pools(client: httpx.Client) -> httpx.Client:
    """`client` with _KeepAssignedConnections in each of its httpx transports' pools."""
    for transport in [client._transport, *client._mounts.values()]:
        pool = getattr(transport, "_pool", None)
        if isinstance(pool, httpcore.ConnectionPool):
            pool.__class__ = mixed_in(_KeepAssignedConnections, type(pool))
    return client


class _KeepAssignedConnections:
    """httpcore pool mixin: a connection handed to a request is not closed before it is used.

    httpcore hands an idle connection to a waiting request, and the connection stays idle until
    that request's thread runs. Meanwhile another thread's pass over the pool can close it as
    expired or surplus, and if the request has been sent by then, its answer is cut off: under
    load (hundreds of streaming threads) a few turns a run failed with "the connection to
    FastGPT was lost" ([Errno 9] Bad file descriptor) just after their first token
    (encode/httpcore#1110, open against 1.0.9). Such connections sit out the pass instead.
    """

    _connections: list[Any]
    _requests: list[Any]

    def _assign_requests_to_connections(self) -> list[Any]:
        # Called under the pool's lock.
        handed = {id(r.connection) for r in self._requests if r.connection is not None}
        held = [c for c in self._connections if id(c) in handed and c.is_idle()]
        for connection in held:
            self._connections.remove(connection)
        try:
            return super()._assign_requests_to_connections()  # type: ignore[misc]
        finally:
            self._connections.extend(held)


def client_for(app: Any) -> FastGPTClient:
    """A client for an upstream.models.App, on the shared connection pool."""
    from django.conf import settings

    return FastGPTClient(
        app.base_url,
        app.api_key,
        app_id=app.fastgpt_app_id or "",
        timeout=getattr(settings, "FASTGPT_TIMEOUT", 300.0),
        connect_timeout=getattr(settings, "FASTGPT_CONNECT_TIMEOUT", 10.0),
        http=shared_http(),
    )


def api_root(base_url: str) -> str:
    """FastGPT's root URL from what an admin typed: without a trailing / or /api."""
    return _API_SUFFIX.sub("", base_url.strip(), count=1)


# ---------------------------------------------------------------------------- usage


def usage_from(items: list[dict]) -> Usage:
    """Cost and tokens of one request from its node list (flowResponses or flowNodeResponse).

    Only top-level nodes count: a tool or plugin node's totalPoints already include its
    children (childTotalPoints), so recursing into toolDetail/pluginDetail would count twice.
    """
    usage = Usage()
    for item in items or []:
        if not isinstance(item, dict):
            continue
        usage.points += _number(item.get("totalPoints"))
        inputs, outputs = item.get("inputTokens"), item.get("outputTokens")
        if inputs is None and outputs is None:
            inputs = item.get("tokens")  # deprecated since 4.8.17, still sent by old nodes
        usage.input_tokens += int(_number(inputs))
        usage.output_tokens += int(_number(outputs))
        error = item.get("errorText") or item.get("error")
        if error:
            if isinstance(error, dict):
                error = error.get("message") or json.dumps(error, ensure_ascii=False)
            usage.node_errors.append(str(error))
    usage.points = round(usage.points, 6)  # no 0.58000000000001 in the UI
    return usage


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value)


# ---------------------------------------------------------------------------- SSE framing


# What json.loads leaves of an escaped UTF-16 half without its other half ("\ud83d" alone):
# a pair is one character by then.
_LONE_HALF = re.compile("[\ud800-\udfff]")


def _loads(data: str | bytes) -> Any:
    """JSON from FastGPT: json.loads, in C for every event of an answer (orjson: 1.5 against
    6.7 us per chunk).

    orjson refuses what the standard library accepts beyond RFC 8259 (NaN, lone surrogates):
    such data gets json's answer, with every lone UTF-16 half made U+FFFD. UTF-8 cannot carry
    one, so Redis and PostgreSQL refused it: one in an answer failed the relay's write for
    every answer written with it, and its turn could not even be marked failed. (Node writes
    one for a string cut between the two halves of an emoji.) orjson reads an integer beyond
    64 bits as a float; FastGPT's numbers (tokens, points, seconds) are nowhere near.
    """
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _whole(json.loads(data))


def _whole(value: Any) -> Any:
    """`value` with every lone UTF-16 half in its strings (keys too) made U+FFFD."""
    if isinstance(value, str):
        return _LONE_HALF.sub("\ufffd", value)
    if isinstance(value, list):
        return [_whole(item) for item in value]
    if isinstance(value, dict):
        return {_whole(key): _whole(item) for key, item in value.items()}
    return value


class _SSEParser:
    """Server-sent events, incrementally: bytes in, (event name, data) per frame out.

    Lines end at LF, CRLF or CR, as the SSE spec says, and only there: str.splitlines (and so
    httpx's iter_lines) also splits at U+2028 and friends, which FastGPT leaves unescaped inside
    JSON strings. Multi-line data is joined with newlines.
    """

    __slots__ = ("_tail", "_after_cr", "_event", "_data")

    def __init__(self) -> None:
        self._tail: list[bytes] = []
        self._after_cr = False
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        frames: list[tuple[str, str]] = []
        if not chunk:
            return frames
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._after_cr = chunk.endswith(b"\r")
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines, newline, rest = chunk.rpartition(b"\n")
        if not newline:
            self._tail.append(chunk)
            return frames
        if self._tail:
            self._tail.append(lines)
            lines = b"".join(self._tail)
            self._tail = []
        if rest:
            self._tail.append(rest)
        # Decoded at once: a UTF-8 sequence never spans an LF, so this is line by line.
        self._parse(lines.decode("utf-8", "replace"), frames)
        return frames

    def end(self) -> list[tuple[str, str]]:
        frames: list[tuple[str, str]] = []
        if self._tail:
            self._parse(b"".join(self._tail).decode("utf-8", "replace"), frames)
            self._tail = []
        if self._data:
            # A last frame without its blank line: keep it rather than lose [DONE] or an error.
            frames.append((self._event, "\n".join(self._data)))
            self._event, self._data = "", []
        return frames

    def _parse(self, text: str, frames: list[tuple[str, str]]) -> None:
        """Complete lines, one loop for all: this runs for every token of every answer."""
        event, data = self._event, self._data
        for line in text.split("\n"):
            if not line:
                if data:
                    frames.append((event, data[0] if len(data) == 1 else "\n".join(data)))
                event, data = "", []
            elif line[0] != ":":  # else a comment
                name, _, value = line.partition(":")
                if value[:1] == " ":
                    value = value[1:]
                if name == "data":
                    data.append(value)
                elif name == "event":
                    event = value
        self._event, self._data = event, data


def _frames(chunks: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """(event name, data) per SSE frame of a byte stream."""
    parser = _SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.end()


# ---------------------------------------------------------------------------- errors


def _category(body: dict) -> str:
    """What a FastGPT error envelope (or SSE error payload) means, by code, statusText or text."""
    code = body.get("code")
    status_text = str(body.get("statusText") or "")
    message = str(body.get("message") or "")
    if code == 429:
        return "rate"
    if code in (403, 514) or status_text in ("unAuthorization", "unAuthApiKey"):
        return "key_rejected"
    if message == "APIKey invalid":
        return "key_rejected"
    if code == 500004 or status_text == "aiPointsNotEnough":
        return "points"
    if code == 504000 or status_text == "unAuthChat":
        return "unauth_chat"
    if message.startswith("Key is error"):
        return "global_key"
    if message == "app is empty":
        return "no_app"
    if message == "messages is empty":
        return "empty_messages"
    if message == "Invalid file url":
        return "file_url"
    if "工作流版本过低" in message:
        return "republish"
    return "other"


def _readable(category: str, body: dict) -> tuple[str, bool, bool]:
    """(message, permanent, admin_action) for an error category."""
    code = body.get("code")
    status_text = str(body.get("statusText") or "")
    message = str(body.get("message") or "").strip()
    label = " ".join(str(p) for p in (code, status_text) if p not in (None, "", "error"))
    if category == "rate":
        seconds = _RETRY_IN.search(message)
        wait = f" Please try again in {seconds.group(1)} seconds." if seconds else ""
        return f"FastGPT is busy: this team reached its request limit.{wait}", False, False
    if category == "key_rejected":
        label = label or "APIKey invalid"
        return (
            f"FastGPT rejected the app key ({label}): an administrator must replace it.",
            True,
            True,
        )
    if category == "points":
        return (
            "The FastGPT team has run out of AI points: an administrator must top it up.",
            True,
            True,
        )
    if category == "unauth_chat":
        return (
            f"FastGPT refused access to this conversation ({label}): it belongs to another team. "
            "Start a new conversation.",
            True,
            False,
        )
    if category == "global_key":
        return (
            "FastGPT says this is a global (team) key: an administrator must set the FastGPT "
            "app ID, or use an app key.",
            True,
            True,
        )
    if category == "no_app":
        return (
            "FastGPT cannot find the app (app is empty): an administrator must check the FastGPT "
            "app ID.",
            True,
            True,
        )
    if category == "empty_messages":
        return "FastGPT received an empty message.", True, False
    if category == "file_url":
        return "FastGPT refused a file address that is not on its allowed list.", True, False
    if category == "republish":
        return (
            "The FastGPT app's workflow is too old: an administrator must publish it again.",
            True,
            True,
        )
    if code == 400 or message == "Data validation error":
        return "FastGPT rejected the request as invalid (Data validation error).", True, False
    if not message:
        return f"FastGPT reported an error ({label or 'no details'}).", True, False
    if _I18N_KEY.match(message):
        # An i18n key with no text of its own (§1.3): the key still tells an admin what it is.
        return f"FastGPT reported an error ({label or 'error'}: {message}).", True, False
    if len(message) > 300:
        message = message[:300] + "…"
    return f"FastGPT reported an error: {message}", True, False


# How often a question is resent after a reused connection was found closed (see stream_chat).
STALE_RETRIES = 2


def _connect_tracer(connected: list[str]) -> Callable[[str, dict], None]:
    def trace(event: str, _info: dict) -> None:
        if event.startswith("connection.connect_tcp"):
            connected.append(event)

    return trace


def _transport_error(exc: httpx.HTTPError, *, phase: str, timeout: float) -> UpstreamError:
    """Map an httpx failure; `phase` is "request" (before the body) or "streaming"."""
    if isinstance(exc, httpx.PoolTimeout):
        return UpstreamError(
            "Too many answers are streaming from FastGPT at once: no connection was free.",
            permanent=False,
        )
    if isinstance(exc, httpx.ConnectTimeout):
        return UpstreamError(
            "FastGPT could not be reached: the connection timed out.", permanent=False
        )
    if isinstance(exc, httpx.ConnectError):
        reason = str(exc) or "connection failed"
        return UpstreamError(f"FastGPT could not be reached ({reason}).", permanent=False)
    if isinstance(exc, httpx.WriteError | httpx.WriteTimeout):
        # FastGPT reads the whole body before it runs anything, so a half-sent question is safe.
        return UpstreamError("The question could not be sent to FastGPT.", permanent=False)
    if isinstance(exc, httpx.ReadTimeout):
        # The question was sent: FastGPT may be running it, so it must not be sent again.
        if phase == "streaming":
            return UpstreamError(
                f"FastGPT stopped sending the answer (nothing for {timeout:g} seconds).",
                permanent=True,
            )
        return UpstreamError(
            f"FastGPT did not start answering within {timeout:g} seconds.", permanent=True
        )
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.StreamError):
        if phase == "streaming":
            return UpstreamError(_LOST, permanent=True)
        return UpstreamError(
            "The connection to FastGPT was lost before it answered.", permanent=True
        )
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return UpstreamError(
            "The FastGPT base URL is not a valid http(s) address: an administrator must fix it.",
            permanent=True,
            admin_action=True,
        )
    return UpstreamError(f"Talking to FastGPT failed ({type(exc).__name__}).", permanent=True)


def _pushable(response: httpx.Response) -> bool:
    """Whether the body is an event stream as sent (not an error body, not compressed)."""
    headers = response.headers
    return "text/event-stream" in headers.get("content-type", "").lower() and (
        headers.get("content-encoding", "identity").lower() == "identity"
    )


# How a connection lost mid-answer shows; after [DONE] the answer is whole (see _EventReader).
_AFTER_DONE_LOSSES = (httpx.RemoteProtocolError, httpx.ReadError, httpx.ReadTimeout)


class _Stopped(Exception):
    """The sink of stream_chat_to asked to stop."""


class _EventReader:
    """One answer's SSE frames as typed events; finish() says how it ended."""

    __slots__ = ("_client", "finish_reason", "done")

    def __init__(self, client: FastGPTClient) -> None:
        self._client = client
        self.finish_reason: str | None = None
        self.done = False

    def take(self, name: str, data: str) -> Event | None:
        """The event a frame stands for, None for frames without one; raises UpstreamError."""
        client = self._client
        if name == "error":
            raise client._sse_error(data)
        if len(data) < 64 and data.strip() == "[DONE]":
            # The whole field, never a substring: "[DONE]" in an answer comes as JSON.
            # v1 sends flowResponses after [DONE], so keep reading to the end (§8.2).
            self.done = True
            return None
        if name in ("", "answer", "fastAnswer"):
            chunk = client._load(name or "answer", data)
            choices = chunk.get("choices") or [{}]
            choice = choices[0] if isinstance(choices[0], dict) else {}
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta") or {}
            # content is missing on reasoning chunks and null on the stop chunk; empty chunks
            # are the 10 s heartbeat (§8.3).
            content = delta.get("content") or ""
            reasoning = delta.get("reasoning_content") or ""
            if not (content or reasoning):
                return None
            return AnswerDelta(
                text=content if isinstance(content, str) else str(content),
                reasoning=reasoning if isinstance(reasoning, str) else str(reasoning),
                fast=name == "fastAnswer",
            )
        if name == "flowNodeStatus":
            payload = client._load(name, data)
            return NodeStatus(
                status=str(payload.get("status", "")), name=str(payload.get("name", ""))
            )
        if name in _TOOL_EVENTS:
            tool = client._load(name, data).get("tool")
            return ToolEvent(kind=name, tool=tool if isinstance(tool, dict) else {})
        if name == "updateVariables":
            return VariablesUpdated(variables=client._load(name, data))
        if name == "interactive":
            payload = client._load(name, data)
            inner = payload.get("interactive")
            return Interactive(interactive=inner if isinstance(inner, dict) else payload)
        if name == "workflowDuration":
            seconds = client._load(name, data).get("durationSeconds")
            return WorkflowDuration(seconds=_number(seconds))
        if name == "flowNodeResponse":
            return NodeResponse(item=client._load(name, data))
        if name == "flowResponses":
            items = client._load(name, data, kind=list)
            return FlowResponses(items=[i for i in items if isinstance(i, dict)])
        return None  # any other event name is from a newer FastGPT: ignore it

    def lost_after_done(self) -> bool:
        """Whether a connection lost now costs only the node list after [DONE] (logged)."""
        if self.done:
            log.warning("FastGPT closed the stream after [DONE], before flowResponses")
        return self.done

    def finish(self) -> Finished:
        """The last event, once the stream has ended; raises if the answer was cut off."""
        if not self.done and self.finish_reason is None:
            raise self._client._error(_LOST, permanent=True)
        return Finished(finish_reason=self.finish_reason or "stop")


# ---------------------------------------------------------------------------- client


class FastGPTClient:
    """Speaks to one FastGPT app with one key."""

    # Error reports (technical 500, admin e-mails) show frame locals; these hold the key.
    @sensitive_variables("api_key")
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        app_id: str = "",
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.root = api_root(base_url)
        self.app_id = app_id.strip()
        self._key = api_key.strip()
        self._timeout_s = timeout
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout, pool=connect_timeout)
        self._http = http if http is not None else shared_http()
        self._url = f"{self.root}/api/v1/chat/completions"

    def __repr__(self) -> str:
        return f"<FastGPTClient {self.root!r} app_id={self.app_id!r}>"

    @property
    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._key}",
            "Accept": "text/event-stream, application/json",
        }

    def _error(self, message: str, **kwargs: Any) -> UpstreamError:
        if self._key and self._key in message:
            message = message.replace(self._key, "[the key]")  # FastGPT must not leak it via us
        return UpstreamError(message, **kwargs)

    def _from_body(self, body: dict) -> UpstreamError:
        category = _category(body)
        message, permanent, admin_action = _readable(category, body)
        retry_after = None
        if category == "rate":
            found = _RETRY_IN.search(str(body.get("message") or ""))
            retry_after = float(found.group(1)) if found else None
        code = body.get("code")
        return self._error(
            message,
            code=code if code is not None else 500,  # FastGPT's code for an unnamed error
            permanent=permanent,
            admin_action=admin_action,
            status_text=str(body.get("statusText") or ""),
            retry_after=retry_after,
        )

    # ------------------------------------------------------------------ streaming

    def stream_chat(
        self,
        *,
        chat_id: str,
        custom_uid: str,
        data_id: str,
        text: str,
        variables: dict | None = None,
    ) -> Iterator[Event]:
        """Ask one question and yield the answer's events, ending with Finished.

        Raises UpstreamError. Closing the generator closes the connection, which stops the
        workflow in v1 (§8.15).
        """
        return self._answer(self._chat_body(chat_id, custom_uid, data_id, text, variables))

    def stream_chat_to(
        self,
        sink: Callable[[Event], bool],
        *,
        chat_id: str,
        custom_uid: str,
        data_id: str,
        text: str,
        variables: dict | None = None,
    ) -> bool:
        """Ask one question and hand each of the answer's events to `sink`, ending with
        Finished; returns True if `sink` stopped the answer by returning True.

        The same answer as stream_chat, for less CPU: on the portal's transport, `sink` runs on
        the process's HTTP loop thread as each piece arrives, so it must be quick and must not
        block (no database). Raises UpstreamError, or what `sink` raised.
        """
        body = self._chat_body(chat_id, custom_uid, data_id, text, variables)
        answer = self._answer(body, sink)
        try:
            for event in answer:  # only events that were not pushed to `sink`
                if sink(event):
                    return True
        except _Stopped:
            return True
        finally:
            answer.close()
        return False

    def _chat_body(
        self, chat_id: str, custom_uid: str, data_id: str, text: str, variables: dict | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "chatId": chat_id,
            "customUid": custom_uid,
            "responseChatItemId": data_id,
            "stream": True,
            "detail": True,
            # Only the new message: FastGPT loads the history of chatId itself (§8.9).
            "messages": [{"role": "user", "content": text}],
        }
        if variables:
            body["variables"] = variables
        if self.app_id:
            body["appId"] = self.app_id  # only a global key needs it; an app key ignores it
        return body

    def _answer(
        self, body: dict[str, Any], sink: Callable[[Event], bool] | None = None
    ) -> Iterator[Event]:
        """The answer's events; those the transport could push straight to `sink` are not
        yielded (see stream_chat_to)."""
        for attempt in range(STALE_RETRIES + 1):
            phase = "request"
            connected: list[str] = []  # httpcore trace events: empty means a reused connection
            try:
                with self._http.stream(
                    "POST",
                    self._url,
                    json=body,
                    headers=self._headers,
                    timeout=self._timeout,
                    extensions={"trace": _connect_tracer(connected)},
                ) as response:
                    chunks = self._event_stream(response)
                    phase = "streaming"
                    if sink is not None and PUSH in response.extensions and _pushable(response):
                        self._push(response.extensions[PUSH], sink)
                    else:
                        yield from self._events(_frames(chunks))
                return
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if phase == "request" and not connected and attempt < STALE_RETRIES:
                    # A kept-alive connection FastGPT closed as idle just as we reused it:
                    # Node drops such a request unread, so sending it again cannot run it
                    # twice. On a connection of its own the same failure is not retried.
                    log.info("FastGPT closed a kept-alive connection as it was reused; resending")
                    continue
                raise _transport_error(exc, phase=phase, timeout=self._timeout_s) from None
            except httpx.HTTPError as exc:
                # `from None`: httpx's chain adds nothing a reader needs.
                raise _transport_error(exc, phase=phase, timeout=self._timeout_s) from None

    def _push(self, push: Callable[[Callable[[bytes], bool]], bool], sink: Callable) -> None:
        """The body through the parser into `sink`, on the transport's loop (see stream_chat_to).
        Raises _Stopped if `sink` stopped it, and what _events raises otherwise."""
        parser, reader = _SSEParser(), _EventReader(self)

        def deliver(frames: list[tuple[str, str]]) -> bool:
            for name, data in frames:
                event = reader.take(name, data)
                if event is not None and sink(event):
                    return True
            return False

        try:
            stopped = push(lambda chunk: deliver(parser.feed(chunk))) or deliver(parser.end())
        except _AFTER_DONE_LOSSES:
            if not reader.lost_after_done():
                raise
            stopped = False
        if stopped or sink(reader.finish()):
            raise _Stopped

    def _event_stream(self, response: httpx.Response) -> Iterator[bytes]:
        """The body as an event stream, or the UpstreamError the response stands for."""
        if response.status_code != 200:
            raise self._status_error(response)
        content_type = response.headers.get("content-type", "").lower()
        chunks = response.iter_bytes()
        if "text/event-stream" in content_type:
            return chunks
        # Errors before the SSE headers come as `event: error` on a bare HTTP 200 (§8.5).
        first = b""
        for first in chunks:
            if first:
                break
        if first.lstrip().startswith((b"event:", b"data:", b":")):
            return chain([first], chunks)
        raise self._unexpected(response, first + b"".join(_capped(chunks)), content_type)

    def _status_error(self, response: httpx.Response) -> UpstreamError:
        raw = b"".join(_capped(response.iter_bytes()))
        status = response.status_code
        try:
            body = _loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and ("code" in body or "statusText" in body):
            return self._from_body(body)  # FastGPT's own error: HTTP 500 + envelope (§8.1)
        if status in (502, 503, 504):
            # A proxy in front of FastGPT: FastGPT never saw the question.
            return self._error(
                f"FastGPT is unreachable behind its proxy (HTTP {status}).",
                code=status,
                permanent=False,
            )
        if status == 429:
            retry = response.headers.get("retry-after", "")
            return self._error(
                "FastGPT's gateway is rate limiting requests (HTTP 429).",
                code=429,
                permanent=False,
                retry_after=float(retry) if retry.replace(".", "", 1).isdigit() else None,
            )
        if 300 <= status < 400:
            where = urlsplit(response.headers.get("location", ""))
            target = f"{where.scheme}://{where.netloc}" if where.netloc else "another address"
            return self._error(
                f"FastGPT's address redirects to {target} (HTTP {status}): an administrator "
                "must set the base URL to the final address.",
                code=status,
                admin_action=True,
            )
        if status == 404:
            return self._error(
                "FastGPT's API was not found at this address (HTTP 404): an administrator must "
                "check the base URL.",
                code=404,
                admin_action=True,
            )
        if status in (401, 403):
            return self._error(
                f"A gateway in front of FastGPT refused the request (HTTP {status}).",
                code=status,
                admin_action=True,
            )
        return self._error(f"FastGPT answered with HTTP {status}.", code=status)

    def _unexpected(self, response: httpx.Response, raw: bytes, content_type: str) -> UpstreamError:
        try:
            body = _loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("code") not in (None, 200):
            return self._from_body(body)
        if "html" in content_type or raw.lstrip()[:1] == b"<":
            return self._error(
                "The FastGPT base URL answered with a web page, not FastGPT's API: an "
                "administrator must check it.",
                code=response.status_code,
                admin_action=True,
            )
        return self._error("FastGPT answered with something that is not an event stream.")

    def _events(self, frames: Iterator[tuple[str, str]]) -> Iterator[Event]:
        reader = _EventReader(self)
        try:
            for name, data in frames:
                event = reader.take(name, data)
                if event is not None:
                    yield event
        except _AFTER_DONE_LOSSES:
            if not reader.lost_after_done():
                raise
        yield reader.finish()

    def _load(self, name: str, data: str, kind: type = dict) -> Any:
        try:
            value = _loads(data)
        except ValueError:
            value = None
        if not isinstance(value, kind):
            raise self._error(
                f"FastGPT sent a malformed '{name}' event (not valid JSON); the answer stops here.",
                permanent=True,
            )
        return value

    def _sse_error(self, data: str) -> UpstreamError:
        try:
            body = _loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {"message": data}
        return self._from_body(body)

    # ------------------------------------------------------------------ check

    def check(self) -> CheckResult:
        """Say whether the key works, and whether it is an app key or a global one.

        An empty question is rejected after authentication ("messages is empty") and before
        anything runs, so a check costs no points and leaves no chat (chatId NO_RECORD_HISTORIES).
        """
        outcome, error = self._probe(self.app_id)
        if outcome in ("works", "empty_messages"):
            if not self.app_id:
                return CheckResult(True, "app", "The key works: it is an app key.")
            # Same probe without the app ID: a global key needs it, an app key does not.
            second, _ = self._probe("")
            if second == "global_key":
                return CheckResult(
                    True,
                    "global",
                    f"The key works: it is a global key, used with FastGPT app {self.app_id}.",
                    self.app_id,
                )
            if second in ("works", "empty_messages"):
                return CheckResult(
                    True,
                    "app",
                    "The key works: it is an app key, so the FastGPT app ID setting is not needed.",
                )
            return CheckResult(
                True, "global", f"The key works with FastGPT app {self.app_id}.", self.app_id
            )
        if outcome == "key_rejected":
            if error is not None and error.code == 403:
                return CheckResult(
                    False,
                    "unknown",
                    "FastGPT cannot read this key (403 unAuthorization): paste the whole key, "
                    "fastgpt-… with no spaces.",
                )
            return CheckResult(
                False,
                "unknown",
                "FastGPT does not know this key (514 unAuthApiKey): paste a valid key.",
            )
        if outcome == "global_key":
            return CheckResult(
                False,
                "global",
                "This is a global (team) key: set the FastGPT app ID of the app to chat with.",
            )
        if outcome == "no_app":
            where = f" {self.app_id}" if self.app_id else " of this key"
            return CheckResult(
                False,
                "global" if self.app_id else "app",
                f"FastGPT cannot find the app{where} (app is empty): check the FastGPT app ID.",
                self.app_id,
            )
        if outcome == "points":
            return CheckResult(
                False,
                "unknown",
                "FastGPT accepts the key, but the team has run out of AI points: top it up.",
            )
        assert error is not None
        return CheckResult(False, "unknown", f"The check failed: {error.message}")

    # Every variable, here and in the httpx frames below (headers, the encoded Authorization).
    # stream_chat is a generator, which this decorator cannot cover (its frames run under the
    # caller's, not the wrapper's); it runs only in the worker, whose logs hold no frame locals.
    @sensitive_variables()
    def _probe(self, app_id: str) -> tuple[str, UpstreamError | None]:
        body: dict[str, Any] = {
            "chatId": NO_RECORD_CHAT_ID,
            "stream": False,
            "detail": False,
            "messages": [],
        }
        if app_id:
            body["appId"] = app_id
        try:
            response = self._http.post(
                self._url, json=body, headers=self._headers, timeout=self._timeout
            )
        except httpx.HTTPError as exc:
            error = _transport_error(exc, phase="request", timeout=self._timeout_s)
            return "transport", error
        if response.status_code == 200:
            try:
                answer = _loads(response.content)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and "choices" in answer:
                return "works", None  # a FastGPT that accepts an empty question
            content_type = response.headers.get("content-type", "")
            error = self._unexpected(response, response.content, content_type)
            return _category(answer) if isinstance(answer, dict) else "other", error
        try:
            envelope = _loads(response.content)
        except ValueError:
            envelope = None
        if isinstance(envelope, dict) and ("code" in envelope or "statusText" in envelope):
            return _category(envelope), self._from_body(envelope)
        return "other", self._status_error(response)


def _capped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """At most _ERROR_BODY_LIMIT bytes of an error body: a proxy page can be large."""
    size = 0
    for chunk in chunks:
        yield chunk[: _ERROR_BODY_LIMIT - size]
        size += len(chunk)
        if size >= _ERROR_BODY_LIMIT:
            return
