"""The FastGPT double: a real HTTP server on loopback that behaves as FastGPT does.

fastgpt-api.md (in the shared docs) describes the behaviour reproduced here.

Tests, `make run` (as a labelled demo upstream) and the benchmarks talk to it over real HTTP, so
the client is exercised exactly as it is against FastGPT. It is a plain ASGI app (no framework)
served by uvicorn in a background thread. It follows the primary snapshot of fastgpt-api.md;
the later upstream variants of §9 are constructor switches.

Faults are queued with inject() (or POST /__double__/faults from another process) and apply to
the next completions requests. See FAULTS for their names.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

# A demo key, not a secret: deliberately shorter than a real key (fastgpt- + 52..65 alphanumerics),
# so nothing mistakes it for a leaked one.
DOUBLE_APP_KEY = "fastgpt-doublekey0demo0not0secret"
DOUBLE_APP_ID = "65f0d0b1e000000000000a01"
DOUBLE_TEAM_ID = "65f0d0b1e000000000000e01"
DOUBLE_TMB_ID = "65f0d0b1e000000000000b01"

FAULTS = frozenset(
    {
        "proxy_502",  # nginx-like HTML 502, before FastGPT sees the request
        "proxy_503",
        "proxy_504",
        "rate_429",  # QPM: JSON HTTP 500 code 429, even with stream=true. params: limit, seconds
        "key_rejected",  # 514 unAuthApiKey: an `event: error` frame on HTTP 200 when streaming
        "points",  # 500004 aiPointsNotEnough, like key_rejected
        "error",  # any FastGPT error. params: code, status_text, message, named (bool)
        "drop_mid_stream",  # a few chunks, then the connection is cut. params: after_tokens
        "slow_first_token",  # params: seconds (heartbeats keep flowing meanwhile)
        "malformed_sse",  # a frame whose data is not valid JSON, in the middle of the answer
        "node_error",  # the AI node fails: no error event, errorText in the node list, no answer
        "big_answer",  # params: size (bytes of answer text), chunk (bytes per frame)
        "interactive",  # a userSelect node, as the [[select]] trigger
        "hang",  # accepts the request and answers nothing for params: seconds, then a proxy 504
        "raw",  # params: bytes (str|bytes|list, written verbatim), pause, status, headers, abort
    }
)

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream;charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
    (b"access-control-allow-origin", b"*"),
]
_JSON_TYPE = (b"content-type", b"application/json; charset=utf-8")
_NGINX_PAGE = (
    "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_PROXY_REASONS = {
    502: "Bad Gateway",
    503: "Service Temporarily Unavailable",
    504: "Gateway Time-out",
}
_NEXT_404 = (
    b"<!DOCTYPE html><html><head><title>404: This page could not be found</title></head>"
    b"<body><h1>404</h1><h2>This page could not be found.</h2></body></html>"
)

_KEY_IS_ERROR = "Key is error. You need to use the app key rather than the account key."
_NO_RECORD = "NO_RECORD_HISTORIES"

# OpenAI-shaped chunk, split around the content so a token's frame is two concatenations.
_CHUNK_HEAD = (
    b'{"id":"","object":"","created":0,"model":"","choices":[{"delta":{"role":"assistant",'
)
_CHUNK_OPEN = _CHUNK_HEAD + b'"content":'
_CHUNK_TAIL = b'},"index":0,"finish_reason":null}]}'
_STOP_JSON = _CHUNK_OPEN + b'null},"index":0,"finish_reason":"stop"}]}'
_HEARTBEAT_JSON = _CHUNK_OPEN + b'""' + _CHUNK_TAIL

_VOCAB = (
    "FastGPT streams this answer token by token so that the portal can show it as it arrives "
    "and measure how long every step takes under load"
).split()


class _Abort(Exception):
    """Raised inside the app to cut the connection (drop_mid_stream, raw abort)."""


class _QuietAbort(logging.Filter):
    # uvicorn logs every exception that escapes an app; a deliberate cut is not an error.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Abort))


logging.getLogger("uvicorn.error").addFilter(_QuietAbort())


class _Err(Exception):
    """A FastGPT error response (§1.3): named ones carry code/statusText/i18n message."""

    def __init__(
        self,
        message: str,
        *,
        code: int = 500,
        status_text: str = "error",
        named: bool = False,
        always_json: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status_text = status_text
        self.named = named
        self.always_json = always_json  # QPM answers JSON even to stream=true (§3.7)

    def envelope(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "statusText": self.status_text,
            "message": self.message,
            "data": None,
        }

    def sse_payload(self) -> dict[str, Any]:
        # sseErrRes writes the full entry for named errors, only the text otherwise.
        return self.envelope() if self.named else {"message": self.message}


def _unauthorization() -> _Err:
    return _Err(
        "common:code_error.error_message.403", code=403, status_text="unAuthorization", named=True
    )


def _unauth_api_key() -> _Err:
    return _Err(
        "common:code_error.error_message.514", code=514, status_text="unAuthApiKey", named=True
    )


def _points() -> _Err:
    return _Err(
        "common:code_error.team_error.ai_points_not_enough",
        code=500004,
        status_text="aiPointsNotEnough",
        named=True,
    )


def _unauth_chat() -> _Err:
    return _Err(
        "common:code_error.chat_error.un_auth", code=504000, status_text="unAuthChat", named=True
    )


def _ok(data: Any) -> dict[str, Any]:
    return {"code": 200, "statusText": "", "message": "", "data": data}


def _nanoid(size: int = 16) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return random.choice(string.ascii_lowercase) + "".join(random.choices(alphabet, k=size - 1))


def _object_id() -> str:
    return f"{random.getrandbits(96):024x}"


def _dumps(value: Any) -> bytes:
    # Node's JSON.stringify: compact, non-ASCII (even U+2028) left as is.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _dumps(payload) + b"\n\n"


def _answer_frames(pieces: Iterable[str], *, detail: bool, event: bytes = b"answer") -> list[bytes]:
    head = b"event: " + event + b"\ndata: " if detail else b"data: "
    return [head + _CHUNK_OPEN + _dumps(p) + _CHUNK_TAIL + b"\n\n" for p in pieces]


def _reasoning_frame(text: str, *, detail: bool) -> bytes:
    # Reasoning deltas have no `content` key at all (§3.3).
    head = b"event: answer\ndata: " if detail else b"data: "
    body = _CHUNK_HEAD + b'"reasoning_content":' + _dumps(text) + _CHUNK_TAIL
    return head + body + b"\n\n"


def _data_frame(body: bytes, *, detail: bool) -> bytes:
    return (b"event: answer\ndata: " if detail else b"data: ") + body + b"\n\n"


def _tokenize(text: str) -> list[str]:
    return re.findall(r"\s*\S+|\s+$", text)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _files_of(content: Any) -> list[dict]:
    if not isinstance(content, list):
        return []
    files = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            files.append({"type": "file", "file": {"type": "image", "name": "", "url": url}})
        elif part.get("type") == "file_url":
            files.append(
                {
                    "type": "file",
                    "file": {"type": "file", "name": part.get("name", ""), "url": part.get("url")},
                }
            )
    return files


@dataclass(frozen=True, slots=True)
class _Key:
    key: str
    app_id: str
    name: str
    kind: str
    team_id: str
    tmb_id: str


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, str]
    json: Any
    entry: dict[str, Any] | None


@dataclass(slots=True)
class _Plan:
    """What one completions request does, decided before anything is written."""

    steps: list[tuple] = field(default_factory=list)
    nodes: list[dict] = field(default_factory=list)  # top-level responseData
    values: list[dict] = field(default_factory=list)  # the AI item's value items
    continuation: dict | None = None  # the stored AI item an interactive answer resumes
    new_variables: dict = field(default_factory=dict)
    first_token_delay: float = 0.0
    drop_after: int | None = None  # drop_mid_stream: cut the connection after this many tokens
    malformed: bool = False


@dataclass(slots=True)
class _Run:
    """One streaming response in flight."""

    send: Callable[[dict], Awaitable[None]]
    detail: bool
    version: int
    writes: list[float] | None
    stop: asyncio.Event
    next_heartbeat: float
    disconnected: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    answer: list[str] = field(default_factory=list)

    async def write(self, data: bytes, count: int = 0) -> None:
        """Write `data`; `count` is how many answer chunks it holds (for record_writes)."""
        if self.disconnected:
            return  # v2 keeps running after the client left; nobody reads the bytes
        await self.send({"type": "http.response.body", "body": data, "more_body": True})
        if self.writes is not None:
            now = time.monotonic()
            self.writes.extend([now] * count)


class FastGPTDouble:
    """A FastGPT stand-in on loopback. Use as a context manager or start()/stop().

    keys: {key: {"app_id", "name", "kind": "app"|"global", "team_id", "tmb_id"}}; an app_id on
    a global key only makes that app exist. token_rate: tokens per second (0: no pacing).
    tokens: answer length (None: a short Markdown echo of the question). Questions containing
    [[select]], [[fast]], [[reasoning]] or [[vars]] get a userSelect node, a fastAnswer, reasoning
    chunks or an updateVariables event. record_writes: keep, per completions request, the
    time.monotonic() of each answer chunk written (received[i]["writes"]).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        keys: dict[str, dict] | None = None,
        token_rate: float = 0.0,
        tokens: int | None = None,
        first_token_delay: float = 0.0,
        heartbeat_seconds: float = 10.0,
        flow_responses_before_done: bool = False,
        return_generated_id: bool = False,
        record_writes: bool = False,
        app_ids: Iterable[str] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.token_rate = token_rate
        self.tokens = tokens
        self.first_token_delay = first_token_delay
        self.heartbeat_seconds = heartbeat_seconds
        # §9: later FastGPT writes flowResponses before [DONE] and returns a generated chatId.
        self.flow_responses_before_done = flow_responses_before_done
        self.return_generated_id = return_generated_id
        self.record_writes = record_writes
        spec = keys if keys is not None else {DOUBLE_APP_KEY: {"app_id": DOUBLE_APP_ID}}
        self._keys: dict[str, _Key] = {}
        for key, info in spec.items():
            kind = info.get("kind", "app")
            self._keys[key] = _Key(
                key=key,
                app_id=info.get("app_id", "") if kind == "app" else "",
                name=info.get("name", "double key"),
                kind=kind,
                team_id=info.get("team_id", DOUBLE_TEAM_ID),
                tmb_id=info.get("tmb_id", DOUBLE_TMB_ID),
            )
        self._apps = {DOUBLE_APP_ID, *app_ids}
        self._apps.update(info["app_id"] for info in spec.values() if info.get("app_id"))
        self._lock = threading.Lock()
        # Bounded, so a long-running demo (`make run`) does not grow without end.
        self._received: deque[dict[str, Any]] = deque(maxlen=100_000)
        self._faults: deque[list] = deque()
        self.chats: dict[str, dict[str, Any]] = {}
        self._running: dict[str, _Run] = {}  # v2 runs by chatId, for /api/v2/chat/stop
        self._last_ms = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        # A fixed-length answer is the same for every request: encode its frames once.
        self._fixed: tuple[list[str], list[bytes], list[bytes]] | None = None
        if tokens is not None:
            pieces = [(" " if i else "") + _VOCAB[i % len(_VOCAB)] for i in range(tokens)]
            self._fixed = (
                pieces,
                _answer_frames(pieces, detail=True),
                _answer_frames(pieces, detail=False),
            )

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> FastGPTDouble:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto must be IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then, and
        # without it every response on a reused connection waits 40 ms for a delayed ACK.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4096)
        self.port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            self,
            interface="asgi3",
            proxy_headers=False,
            lifespan="off",
            log_config=None,  # leave the host process's logging alone
            access_log=False,
            timeout_keep_alive=5,  # Node's default, so clients meet FastGPT's idle closes
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        # uvicorn installs signal handlers only in the main thread, so none are set here.
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fastgpt-double", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                sock.close()
                raise RuntimeError("the FastGPT double did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        # force_exit: don't wait for paced or hanging streams to finish; they are cancelled.
        self._server.should_exit = True
        self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FastGPTDouble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----------------------------------------------------------------- control

    @property
    def received(self) -> list[dict[str, Any]]:
        """Every request received (control requests excluded), oldest first."""
        with self._lock:
            return list(self._received)

    def inject(self, fault: str, count: int = 1, **params: Any) -> None:
        """Queue `fault` for the next `count` completions requests."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.append([fault, count, params])

    def reset(self) -> None:
        with self._lock:
            self._received.clear()
            self._faults.clear()
            self.chats.clear()

    def _take_fault(self) -> tuple[str, dict[str, Any]] | None:
        with self._lock:
            if not self._faults:
                return None
            entry = self._faults[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._faults.popleft()
            return entry[0], entry[2]

    def _now(self) -> str:
        # Strictly increasing millisecond times, so updateTime orders chats even within 1 ms.
        ms = max(self._last_ms + 1, int(time.time() * 1000))
        self._last_ms = ms
        return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"

    # ----------------------------------------------------------------- ASGI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        entry = None
        if not path.startswith("/__double__/"):
            entry = {
                "path": path,
                "method": scope["method"],
                "headers": headers,
                "query": scope["query_string"].decode("latin-1"),
                "json": parsed,
                "time": time.monotonic(),
            }
            with self._lock:
                self._received.append(entry)
        request = _Request(
            method=scope["method"],
            path=path,
            headers=headers,
            query=dict(parse_qsl(scope["query_string"].decode("latin-1"))),
            json=parsed,
            entry=entry,
        )
        if path in ("/api/v1/chat/completions", "/api/v2/chat/completions"):
            await self._completions(
                request, receive, send, version=2 if path.startswith("/api/v2/") else 1
            )
            return
        handler = self._routes.get(path)
        if handler is None:
            await _respond(send, 404, _NEXT_404, [(b"content-type", b"text/html; charset=utf-8")])
            return
        try:
            result = handler(self, request)
            if asyncio.iscoroutine(result):
                result = await result
        except _Err as err:
            await _json(send, 500, err.envelope(), clear_cookie=err.code == 403)
            return
        status, payload = result
        await _json(send, status, payload)

    # ----------------------------------------------------------------- auth (§1.1, §1.2)

    def _auth(self, headers: dict[str, str]) -> tuple[_Key, str]:
        """The key and the appId it carries (legacy fastgpt-<id>-<appId> form), or _Err."""
        authorization = headers.get("authorization", "")
        parts = authorization.split(" ")
        # FastGPT takes the second token and never checks that the first word is Bearer.
        token = parts[1] if len(parts) > 1 else ""
        if not token:
            raise _unauthorization()
        pieces = token.split("-")
        if len(pieces) == 2:
            key, legacy_app = token, ""
        elif len(pieces) == 3:
            key, legacy_app = f"{pieces[0]}-{pieces[1]}", pieces[2]
        else:
            raise _unauthorization()
        found = self._keys.get(key)
        if found is None:
            raise _unauth_api_key()
        return found, legacy_app

    def _crud_auth(self, request: _Request, app_id: str | None) -> _Key:
        key, _ = self._auth(request.headers)
        if not app_id:
            raise _Err("appId is empty")
        if key.kind == "app" and key.app_id != app_id:
            raise _Err(
                "common:code_error.app_error.un_auth_app", code=502001, status_text="unAuthApp"
            )
        return key

    def _crud_chat(self, key: _Key, app_id: str, chat_id: str | None) -> dict | None:
        chat = self.chats.get(chat_id or "")
        if chat is None or chat["appId"] != app_id:
            return None
        if chat["teamId"] != key.team_id:
            raise _unauth_chat()
        return chat

    # ----------------------------------------------------------------- completions (§2, §3)

    async def _completions(
        self, request: _Request, receive: Callable, send: Callable, *, version: int
    ) -> None:
        body = request.json if isinstance(request.json, dict) else {}
        stream = bool(body.get("stream"))
        detail = bool(body.get("detail"))
        fault = self._take_fault()
        name, params = fault if fault else ("", {})
        # Faults that stand for a proxy or the network: FastGPT never sees these requests.
        if name in ("proxy_502", "proxy_503", "proxy_504"):
            await _proxy_page(send, int(name[-3:]))
            return
        if name == "hang":
            await _wait_or_disconnect(receive, float(params.get("seconds", 30)))
            await _proxy_page(send, 504)
            return
        if name == "raw":
            await _raw(send, params)
            return
        try:
            key, legacy_app = self._auth(request.headers)
            # App keys answer for their own app; any body appId is ignored (§1.2).
            app_id = key.app_id or legacy_app or str(body.get("appId") or "")
            if not app_id:
                raise _Err(_KEY_IS_ERROR)
            if app_id not in self._apps:
                raise _Err("app is empty")
            chat_id = body.get("chatId") or ""
            chat = self.chats.get(chat_id) if chat_id else None
            if chat is not None and chat["teamId"] != key.team_id:
                raise _unauth_chat()
            if name == "rate_429":
                limit, seconds = params.get("limit", 60), params.get("seconds", 12)
                raise _Err(
                    f"Rate limit exceeded. Maximum {limit} requests per 60 seconds for this team. "
                    f"Please try again in {seconds} seconds.",
                    code=429,
                    always_json=True,
                )
            if name == "key_rejected":
                raise _unauth_api_key()
            if name == "points":
                raise _points()
            if name == "error":
                raise _Err(
                    str(params.get("message", "error")),
                    code=int(params.get("code", 500)),
                    status_text=str(params.get("status_text", "error")),
                    named=bool(params.get("named", True)),
                )
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise _Err("messages is empty")
        except _Err as err:
            if stream and not err.always_json:
                # Written before any SSE header: HTTP 200, no event-stream type (§3.7).
                payload = b"event: error\ndata: " + _dumps(err.sse_payload()) + b"\n\n"
                await _respond(send, 200, payload, [])
            else:
                await _json(send, 500, err.envelope(), clear_cookie=err.code == 403)
            return

        last = messages[-1] if isinstance(messages[-1], dict) else {}
        question = _text_of(last.get("content"))
        # No chatId: the chat is still saved, under a random id (§2). The magic id saves nothing.
        saved_id = None if chat_id == _NO_RECORD else chat_id or _nanoid(24)
        variables = dict(chat["variables"]) if chat else {}
        if isinstance(body.get("variables"), dict):
            variables.update(body["variables"])
        plan = self._plan(question, chat, variables, name, params)
        started = time.monotonic()

        def save(partial: str | None) -> None:
            if saved_id:
                self._save(
                    key=key,
                    app_id=app_id,
                    chat_id=saved_id,
                    body=body,
                    last=last,
                    question=question,
                    plan=plan,
                    partial=partial,
                    seconds=time.monotonic() - started,
                )

        if stream:
            await self._stream(plan, send, receive, detail, version, chat_id, request, save)
            return
        await asyncio.sleep(self._non_stream_seconds(plan))
        save(None)
        returned_id = chat_id or ((saved_id or "") if self.return_generated_id else "")
        await _json(send, 200, self._non_stream_body(plan, detail, returned_id))

    def _plan(
        self, question: str, chat: dict | None, variables: dict, fault: str, params: dict
    ) -> _Plan:
        plan = _Plan(new_variables=variables, first_token_delay=self.first_token_delay)
        if fault == "slow_first_token":
            plan.first_token_delay += float(params.get("seconds", 5))
        elif fault == "drop_mid_stream":
            plan.drop_after = int(params.get("after_tokens", 3))
        plan.malformed = fault == "malformed_sse"
        last_ai = chat["items"][-1] if chat and chat["items"] else None
        pending = None
        if last_ai and last_ai["obj"] == "AI" and last_ai["value"]:
            tail = last_ai["value"][-1]
            if tail.get("type") == "interactive":
                params_ = tail["interactive"].get("params", {})
                if "userSelectedVal" not in params_:
                    pending = last_ai
        if pending is not None:
            # §3.5: the answer to a userSelect resumes the workflow inside the same AI item.
            plan.continuation = pending
            plan.steps.append(("status", "User select"))
            plan.nodes.append(self._node("n_select", "User select", "userSelect", 0.0))
            plan.nodes[-1]["userSelectResult"] = question
            self._ai_steps(plan, _tokenize(f"You chose **{question}**. Thank you."), question)
            return plan
        if fault == "interactive" or "[[select]]" in question:
            interactive = {
                "type": "userSelect",
                "params": {
                    "description": "Which answer would you like?",
                    "userSelectOptions": [
                        {"key": "option1", "value": "The short one"},
                        {"key": "option2", "value": "The long one"},
                    ],
                },
                "entryNodeIds": ["n_select"],
                "memoryEdges": [],
                "nodeOutputs": [],
                "skipNodeQueue": [],
                "usageId": _object_id(),
            }
            plan.steps.append(("status", "User select"))
            plan.steps.append(("interactive", interactive))
            plan.nodes.append(self._node("n_select", "User select", "userSelect", 0.0))
            plan.values.append({"type": "interactive", "interactive": interactive})
            return plan

        plan.steps.append(("status", "Dataset search"))
        ds = self._node("n_ds", "Dataset search", "datasetSearchNode", 0.02)
        ds.update(
            model="text-embedding-3-small",
            inputTokens=12,
            embeddingTokens=12,
            quoteList=[
                {
                    "id": "65f0d0b1e000000000000c01",
                    "q": "What is the double?",
                    "a": "A stand-in for FastGPT.",
                    "datasetId": "65f0d0b1e000000000000d01",
                    "collectionId": "65f0d0b1e000000000000d02",
                    "sourceName": "faq.csv",
                    "score": [{"type": "embedding", "value": 0.88, "index": 0}],
                }
            ],
        )
        plan.steps.append(("node", ds))
        plan.nodes.append(ds)
        if fault == "node_error":
            plan.steps.append(("status", "AI chat"))
            ai = self._node("n_ai", "AI chat", "chatNode", 0.0)
            ai.update(
                model="gpt-4o-mini",
                query=question,
                errorText="LLM request failed: the model provider answered 503 Service Unavailable",
            )
            plan.steps.append(("node", ai))
            plan.nodes.append(ai)
            return plan

        plan.steps.append(("status", "Tool call"))
        tool_id = _nanoid(12)
        tool = {
            "id": tool_id,
            "toolName": "Calculator",
            "toolAvatar": "core/workflow/template/calculator",
            "functionName": "calculator",
            "params": "",
            "response": "",
        }
        blank = {"id": tool_id, "toolName": "", "toolAvatar": "", "params": "", "response": ""}
        plan.steps.append(("toolCall", {"tool": tool}))
        plan.steps.append(("toolParams", {"tool": {**blank, "params": '{"expression":"6*7"}'}}))
        plan.steps.append(("toolResponse", {"tool": {**blank, "response": "42"}}))
        plan.values.append(
            {
                "type": "tool",
                "tools": [{**tool, "params": '{"expression":"6*7"}', "response": "42"}],
            }
        )
        # The tool node's totalPoints already include its children's (childTotalPoints).
        tn = self._node("n_tool", "Tool call", "tools", 0.15)
        tn.update(
            model="gpt-4o-mini",
            inputTokens=200,
            outputTokens=20,
            toolCallInputTokens=200,
            toolCallOutputTokens=20,
            childTotalPoints=0.05,
            toolDetail=[self._node("n_calc", "Calculator", "httpRequest468", 0.05)],
        )
        plan.steps.append(("node", tn))
        plan.nodes.append(tn)
        if "[[fast]]" in question:
            fast = "\nThis is a specified reply from the double."
            plan.steps.append(("fast", fast))
            plan.values.append({"type": "text", "text": {"content": fast}})

        if fault == "big_answer":
            size = int(params.get("size", 10_000_000))
            chunk = int(params.get("chunk", 4096))
            filler = ("lorem ipsum dolor sit amet " * (chunk // 27 + 1))[:chunk]
            pieces = [filler] * (size // chunk)
            if size % chunk:
                pieces.append(filler[: size % chunk])
        elif self._fixed is not None:
            pieces = self._fixed[0]
        else:
            pieces = _tokenize(
                f"You asked: {question}\n\nHere is what the **FastGPT double** can tell you:\n\n"
                "- it echoes your question\n- it answers in a few tokens\n\nThat is all."
            )
        reasoning = None
        if "[[reasoning]]" in question:
            reasoning = _tokenize("Let me think about this question step by step.")
        self._ai_steps(plan, pieces, question, reasoning=reasoning)
        if "[[vars]]" in question:
            plan.new_variables = {
                **variables,
                "double_turns": int(variables.get("double_turns", 0)) + 1,
            }
            plan.steps.append(("updateVariables", plan.new_variables))
        return plan

    def _ai_steps(
        self, plan: _Plan, pieces: list[str], question: str, *, reasoning: list[str] | None = None
    ) -> None:
        plan.steps.append(("status", "AI chat"))
        plan.steps.append(("first_token",))
        if reasoning:
            plan.steps.append(("reasoning", reasoning))
            plan.values.append({"type": "reasoning", "reasoning": {"content": "".join(reasoning)}})
        plan.steps.append(("answer", "".join(pieces), pieces))
        plan.values.append({"type": "text", "text": {"content": "".join(pieces)}})
        ai = self._node("n_ai", "AI chat", "chatNode", 0.41)
        ai.update(
            model="gpt-4o-mini",
            inputTokens=950,
            outputTokens=len(pieces),
            query=question,
            maxToken=4000,
            historyPreview=[{"obj": "Human", "value": question}],
            contextTotalLen=2,
            finishReason="stop",
        )
        plan.steps.append(("node", ai))
        plan.nodes.append(ai)

    @staticmethod
    def _node(node_id: str, name: str, module_type: str, points: float) -> dict[str, Any]:
        return {
            "id": _nanoid(16),
            "nodeId": node_id,
            "moduleName": name,
            "moduleType": module_type,
            "runningTime": 0.01,
            "totalPoints": points,
        }

    def _non_stream_seconds(self, plan: _Plan) -> float:
        seconds = plan.first_token_delay
        answer = next((s[2] for s in plan.steps if s[0] == "answer"), [])
        if self.token_rate > 0 and answer:
            seconds += (len(answer) - 1) / self.token_rate
        return seconds

    def _non_stream_body(self, plan: _Plan, detail: bool, returned_id: str) -> dict[str, Any]:
        values = plan.values
        texts = [v["text"]["content"] for v in values if v["type"] == "text"]
        message: dict[str, Any] = {"role": "assistant"}
        if values and all(v["type"] == "interactive" for v in values):
            pass  # §3.2 quirk: an interactive-only answer has no `content` key at all
        elif len(values) == 1 and texts:
            message["content"] = texts[0]
        elif not detail or not values:
            message["content"] = "\n".join(texts)
        else:
            message["content"] = values
        reasoning = "".join(v["reasoning"]["content"] for v in values if v["type"] == "reasoning")
        if reasoning:
            message["reasoning_content"] = reasoning
        result: dict[str, Any] = {
            "id": returned_id,
            "model": "",
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 1},
            "choices": [{"message": message, "finish_reason": "stop", "index": 0}],
        }
        if detail:
            result["responseData"] = plan.nodes
            result["newVariables"] = plan.new_variables
        last = plan.nodes[-1] if plan.nodes else {}
        if last.get("error") or last.get("errorText"):
            result["error"] = last.get("error") or last.get("errorText")
        return result

    async def _stream(
        self,
        plan: _Plan,
        send: Callable,
        receive: Callable,
        detail: bool,
        version: int,
        chat_id: str,
        request: _Request,
        save: Callable[[str | None], None],
    ) -> None:
        """Write the SSE answer; `save` stores the chat before the tail, as saveChat does."""
        loop = asyncio.get_running_loop()
        writes: list[float] | None = None
        if self.record_writes and request.entry is not None:
            writes = request.entry["writes"] = []
        run = _Run(
            send=send,
            detail=detail,
            version=version,
            writes=writes,
            stop=asyncio.Event(),
            next_heartbeat=loop.time() + self.heartbeat_seconds,
        )
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, run))
        if version == 2 and chat_id:
            self._running[chat_id] = run
        started = loop.time()
        try:
            for step in plan.steps:
                if run.stop.is_set():
                    break
                await self._step(run, step, plan)
            # A stopped run stores the text it actually produced.
            save("".join(run.answer) if run.stop.is_set() else None)
            if run.disconnected and version == 1:
                return  # v1: the workflow stops with the connection (§8.15)
            if detail:
                seconds = round(loop.time() - started, 3)
                await run.write(_event("workflowDuration", {"durationSeconds": seconds}))
            await run.write(_data_frame(_STOP_JSON, detail=detail))
            done = b"event: answer\ndata: [DONE]\n\n" if detail else b"data: [DONE]\n\n"
            flow = _event("flowResponses", plan.nodes) if detail and version == 1 else b""
            if self.flow_responses_before_done:
                await run.write(flow + done)
            else:
                await run.write(done)
                if flow:
                    await run.write(flow)
            if not run.disconnected:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            run.done.set()
            watcher.cancel()
            if self._running.get(chat_id) is run:
                del self._running[chat_id]

    async def _step(self, run: _Run, step: tuple, plan: _Plan) -> None:
        kind = step[0]
        detail = run.detail
        if kind == "status":
            if detail:
                await run.write(_event("flowNodeStatus", {"status": "running", "name": step[1]}))
        elif kind == "node":
            if detail and run.version == 2:
                await run.write(_event("flowNodeResponse", step[1]))
        elif kind in ("toolCall", "toolParams", "toolResponse", "interactive"):
            if detail:
                payload = {"interactive": step[1]} if kind == "interactive" else step[1]
                await run.write(_event(kind, payload))
        elif kind == "updateVariables":
            if detail:
                await run.write(_event(kind, step[1]))
        elif kind == "fast":
            await run.write(_answer_frames([step[1]], detail=detail, event=b"fastAnswer")[0], 1)
            run.answer.append(step[1])
        elif kind == "first_token":
            if plan.first_token_delay > 0:
                deadline = asyncio.get_running_loop().time() + plan.first_token_delay
                await self._sleep_until(run, deadline)
        elif kind == "reasoning":
            for piece in step[1]:
                await run.write(_reasoning_frame(piece, detail=detail))
        elif kind == "answer":
            pieces: list[str] = step[2]
            if self._fixed is not None and pieces is self._fixed[0]:
                frames = self._fixed[1] if detail else self._fixed[2]
            else:
                frames = _answer_frames(pieces, detail=detail)
            await self._pace(run, pieces, frames, plan)

    async def _pace(self, run: _Run, pieces: list[str], frames: list[bytes], plan: _Plan) -> None:
        loop = asyncio.get_running_loop()
        n = len(frames)
        limit = n if plan.drop_after is None else min(n, plan.drop_after)
        malformed_at = 2 if plan.malformed else -1
        rate = self.token_rate
        start = loop.time()
        i = 0
        while i < limit:
            if run.stop.is_set():
                return
            if rate > 0:
                due = start + i / rate
                if due > loop.time():
                    await self._sleep_until(run, due)
                    if run.stop.is_set():
                        return
                # Everything already due goes in one write, so a busy loop catches up.
                j = i + 1
                now = loop.time()
                while j < limit and start + j / rate <= now:
                    j += 1
            else:
                j = i + 1
                if i % 32 == 31:
                    await asyncio.sleep(0)  # let other connections run
            if i <= malformed_at < j:
                # The JSON is cut inside a string: no client can parse it.
                await run.write(
                    _data_frame(b'{"choices":[{"delta":{"content":"ha', detail=run.detail)
                )
            await run.write(frames[i] if j == i + 1 else b"".join(frames[i:j]), j - i)
            run.answer.extend(pieces[i:j])
            i = j
        if plan.drop_after is not None:
            raise _Abort("drop_mid_stream")

    async def _sleep_until(self, run: _Run, deadline: float) -> None:
        """Sleep, writing the 10 s heartbeat chunks FastGPT writes while a node works."""
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            if run.next_heartbeat <= now:
                await run.write(_data_frame(_HEARTBEAT_JSON, detail=run.detail), 0)
                run.next_heartbeat += self.heartbeat_seconds
                continue
            # asyncio wakes timers up to a clock tick early; don't sleep again for that.
            if deadline - now < 0.001 or run.stop.is_set():
                return
            wait = min(deadline, run.next_heartbeat) - now
            if wait > 0.2:
                # Long waits end early on a stop or a disconnect.
                try:
                    await asyncio.wait_for(run.stop.wait(), wait)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(wait)

    async def _watch_disconnect(self, receive: Callable, run: _Run) -> None:
        message = await receive()
        if message["type"] == "http.disconnect":
            run.disconnected = True
            if run.version == 1:
                run.stop.set()

    def _save(
        self,
        *,
        key: _Key,
        app_id: str,
        chat_id: str,
        body: dict,
        last: dict,
        question: str,
        plan: _Plan,
        partial: str | None,
        seconds: float,
    ) -> None:
        now = self._now()
        chat = self.chats.get(chat_id)
        if chat is None:
            chat = self.chats[chat_id] = {
                "chatId": chat_id,
                "appId": app_id,
                "teamId": key.team_id,
                "tmbId": key.tmb_id,
                "source": "api",
                "sourceName": key.name,
                "outLinkUid": None,
                "title": question[:20] or "New chat",
                "customTitle": "",
                "top": False,
                "variables": {},
                "metadata": {},
                "items": [],
                "deleteTime": None,
                "createTime": now,
                "updateTime": now,
            }
        # saveChat uses $set: the last customUid sent wins; an absent one changes nothing.
        if body.get("customUid") is not None:
            chat["outLinkUid"] = body["customUid"]
        if isinstance(body.get("metadata"), dict):
            chat["metadata"].update(body["metadata"])
        chat["variables"] = dict(plan.new_variables)
        chat["updateTime"] = now
        values = [dict(v) for v in plan.values]
        if partial is not None:
            values = [v for v in values if v["type"] != "text"]
            values.append({"type": "text", "text": {"content": partial}})
        error = next((n.get("errorText") for n in plan.nodes if n.get("errorText")), None)
        if plan.continuation is not None:
            # §3.5: no new pair; the same AI item (same dataId) gets the rest of the answer.
            item = plan.continuation
            item["value"][-1]["interactive"]["params"]["userSelectedVal"] = question
            item["value"].extend(values)
            item["responseData"].extend(plan.nodes)
            return
        chat["items"].append(
            {
                "_id": _object_id(),
                "dataId": last.get("dataId") or _nanoid(),
                "obj": "Human",
                "value": [
                    *_files_of(last.get("content")),
                    {"type": "text", "text": {"content": question}},
                ],
                "time": now,
                "hideInUI": bool(last.get("hideInUI", False)),
                "deleteTime": None,
            }
        )
        ai_item: dict[str, Any] = {
            "_id": _object_id(),
            "dataId": body.get("responseChatItemId") or _nanoid(),
            "obj": "AI",
            "value": values,
            "time": self._now(),
            "hideInUI": False,
            "durationSeconds": round(seconds, 2),
            "responseData": list(plan.nodes),
            "deleteTime": None,
        }
        if error:
            ai_item["errorMsg"] = error
        chat["items"].append(ai_item)

    # ----------------------------------------------------------------- history API (§4)

    def _get_histories(self, request: _Request) -> tuple[int, dict]:
        body = request.json if isinstance(request.json, dict) else {}
        app_id = body.get("appId")
        key = self._crud_auth(request, app_id)
        page_size = int(body.get("pageSize") or 10)
        if body.get("offset") is not None:
            offset = int(body["offset"])
        else:
            offset = (int(body.get("pageNum") or 1) - 1) * page_size
        # customUid/outLinkUid in the body are ignored with a key (§4, issue #3929).
        chats = [
            c
            for c in list(self.chats.values())
            if c["appId"] == app_id
            and c["teamId"] == key.team_id
            and c["tmbId"] == key.tmb_id
            and c["deleteTime"] is None
            and (not body.get("source") or c["source"] == body["source"])
            and _in_range(c["createTime"], body.get("startCreateTime"), body.get("endCreateTime"))
            and _in_range(c["updateTime"], body.get("startUpdateTime"), body.get("endUpdateTime"))
        ]
        chats.sort(key=lambda c: (bool(c["top"]), c["updateTime"]), reverse=True)
        page = [
            {
                "chatId": c["chatId"],
                "updateTime": c["updateTime"],
                "appId": c["appId"],
                "customTitle": c["customTitle"],
                "title": c["title"],
                "top": c["top"],
            }
            for c in chats[offset : offset + page_size]
        ]
        return 200, _ok({"list": page, "total": len(chats)})

    def _update_history(self, request: _Request) -> tuple[int, dict]:
        body = request.json if isinstance(request.json, dict) else {}
        key = self._crud_auth(request, body.get("appId"))
        chat = self._crud_chat(key, body["appId"], body.get("chatId"))
        if chat is not None:
            for name in ("customTitle", "title", "top"):
                if name in body:
                    chat[name] = body[name]
        return 200, _ok(None)

    def _del_history(self, request: _Request) -> tuple[int, dict]:
        app_id = request.query.get("appId")
        key = self._crud_auth(request, app_id)
        chat = self._crud_chat(key, app_id, request.query.get("chatId"))
        if chat is not None:
            chat["deleteTime"] = self._now()  # soft: the logs still show it
        return 200, _ok(None)

    def _clear_histories(self, request: _Request) -> tuple[int, dict]:
        app_id = request.query.get("appId")
        key = self._crud_auth(request, app_id)
        now = self._now()
        # With a key this clears every API chat of the app, from every key and user (§8.14).
        for chat in list(self.chats.values()):
            if (
                chat["appId"] == app_id
                and chat["teamId"] == key.team_id
                and chat["source"] == "api"
                and chat["deleteTime"] is None
            ):
                chat["deleteTime"] = now
        return 200, _ok(None)

    def _get_records(self, request: _Request) -> tuple[int, dict]:
        body = request.json if isinstance(request.json, dict) else {}
        key = self._crud_auth(request, body.get("appId"))
        chat = self._crud_chat(key, body["appId"], body.get("chatId"))
        if chat is None:
            return 200, _ok({"list": [], "total": 0})
        items = [i for i in chat["items"] if i["deleteTime"] is None]
        offset = int(body.get("offset") or 0)
        page_size = int(body.get("pageSize") or 10)
        # Newest first, skip `offset` from the newest end, then back to chronological order.
        newest_first = items[::-1][offset : offset + page_size]
        page = []
        for item in reversed(newest_first):
            out = {k: v for k, v in item.items() if k not in ("responseData", "deleteTime")}
            if item["obj"] == "AI":
                out["llmModuleAccount"] = sum(
                    1 for n in item["responseData"] if n["moduleType"] in ("chatNode", "tools")
                )
                out["totalQuoteList"] = []
                out["historyPreviewLength"] = 2
            page.append(out)
        return 200, _ok({"list": page, "total": len(items)})

    def _get_res_data(self, request: _Request) -> tuple[int, dict]:
        app_id = request.query.get("appId")
        chat_id, data_id = request.query.get("chatId"), request.query.get("dataId")
        if not app_id or not chat_id or not data_id:
            return 200, _ok([])
        key = self._crud_auth(request, app_id)
        chat = self._crud_chat(key, app_id, chat_id)
        for item in chat["items"] if chat else []:
            if item["dataId"] == data_id and item["deleteTime"] is None:
                return 200, _ok(item.get("responseData", []))
        return 200, _ok([])

    def _delete_item(self, request: _Request) -> tuple[int, dict]:
        # Since 4.14.0 only the body is read; the documented query form fails (§8.13).
        body = request.json if isinstance(request.json, dict) else {}
        if not body.get("chatId") or not body.get("contentId"):
            raise _Err("contentId or chatId is empty")
        key = self._crud_auth(request, body.get("appId"))
        chat = self._crud_chat(key, body["appId"], body["chatId"])
        for item in chat["items"] if chat else []:
            if item["dataId"] == body["contentId"]:
                item["deleteTime"] = self._now()
        return 200, _ok(None)

    def _feedback(self, request: _Request) -> tuple[int, dict]:
        body = request.json if isinstance(request.json, dict) else {}
        key = self._crud_auth(request, body.get("appId"))
        chat = self._crud_chat(key, body["appId"], body.get("chatId"))
        for item in chat["items"] if chat else []:
            if item["dataId"] == body.get("dataId"):
                # A field left out is unset, so sending nothing clears the feedback.
                for name in ("userGoodFeedback", "userBadFeedback"):
                    if body.get(name):
                        item[name] = body[name]
                    else:
                        item.pop(name, None)
        return 200, _ok({})

    def _chat_init(self, request: _Request) -> tuple[int, dict]:
        app_id = request.query.get("appId")
        key = self._crud_auth(request, app_id)
        chat_id = request.query.get("chatId", "")
        chat = self._crud_chat(key, app_id, chat_id)
        return 200, _ok(
            {
                "chatId": chat_id,
                "appId": app_id,
                "title": (chat["customTitle"] or chat["title"]) if chat else "",
                "variables": dict(chat["variables"]) if chat else {},
                "app": {
                    "chatConfig": {},
                    "chatModels": ["gpt-4o-mini"],
                    "name": "Double app",
                    "avatar": "/icon/logo.svg",
                    "intro": "A stand-in for FastGPT.",
                    "type": "advanced",
                    "pluginInputs": [],
                },
            }
        )

    def _health(self, request: _Request) -> tuple[int, dict]:
        found = self._keys.get(request.query.get("apiKey", ""))
        if found is None:
            raise _Err("APIKey invalid")
        return 200, _ok({"appId": found.app_id} if found.app_id else {})

    async def _v2_stop(self, request: _Request) -> tuple[int, dict]:
        body = request.json if isinstance(request.json, dict) else {}
        self._crud_auth(request, body.get("appId"))
        run = self._running.get(body.get("chatId") or "")
        if run is not None:
            run.stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), 5)  # FastGPT waits up to 5 s too
        return 200, _ok({"success": True})

    # ----------------------------------------------------------------- HTTP control

    def _ctl_faults(self, request: _Request) -> tuple[int, dict]:
        body = dict(request.json) if isinstance(request.json, dict) else {}
        fault = body.pop("fault", "")
        count = int(body.pop("count", 1))
        try:
            self.inject(fault, count, **body)
        except ValueError as exc:
            return 400, {"ok": False, "error": str(exc)}
        return 200, {"ok": True}

    def _ctl_received(self, request: _Request) -> tuple[int, Any]:
        return 200, self.received

    def _ctl_reset(self, request: _Request) -> tuple[int, dict]:
        self.reset()
        return 200, {"ok": True}

    def _ctl_chats(self, request: _Request) -> tuple[int, dict]:
        return 200, self.chats

    _routes: dict[str, Callable] = {
        "/api/v2/chat/stop": _v2_stop,
        "/api/core/chat/history/getHistories": _get_histories,
        "/api/core/chat/getHistories": _get_histories,
        "/api/core/chat/history/updateHistory": _update_history,
        "/api/core/chat/updateHistory": _update_history,
        "/api/core/chat/history/delHistory": _del_history,
        "/api/core/chat/delHistory": _del_history,
        "/api/core/chat/history/clearHistories": _clear_histories,
        "/api/core/chat/clearHistories": _clear_histories,
        "/api/core/chat/record/getPaginationRecords": _get_records,
        "/api/core/chat/getPaginationRecords": _get_records,
        "/api/core/chat/record/getResData": _get_res_data,
        "/api/core/chat/getResData": _get_res_data,
        "/api/core/chat/item/delete": _delete_item,
        "/api/core/chat/feedback/updateUserFeedback": _feedback,
        "/api/core/chat/init": _chat_init,
        "/api/support/openapi/health": _health,
        "/__double__/faults": _ctl_faults,
        "/__double__/received": _ctl_received,
        "/__double__/reset": _ctl_reset,
        "/__double__/chats": _ctl_chats,
    }


def _in_range(value: str, start: Any, end: Any) -> bool:
    def parse(v: Any) -> datetime:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00"))

    when = parse(value)
    return (not start or when >= parse(start)) and (not end or when <= parse(end))


async def _respond(
    send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: Callable, status: int, payload: Any, *, clear_cookie: bool = False) -> None:
    headers = [_JSON_TYPE]
    if clear_cookie:
        # jsonRes clears the login cookie on unAuthorization (§1.4).
        headers.append((b"set-cookie", b"fastgpt_token=; Path=/; Max-Age=0"))
    await _respond(send, status, _dumps(payload), headers)


async def _proxy_page(send: Callable, status: int) -> None:
    page = _NGINX_PAGE.format(status=status, reason=_PROXY_REASONS[status]).encode()
    await _respond(send, status, page, [(b"content-type", b"text/html"), (b"server", b"nginx")])


async def _wait_or_disconnect(receive: Callable, seconds: float) -> None:
    try:
        await asyncio.wait_for(receive(), seconds)
    except TimeoutError:
        pass


async def _raw(send: Callable, params: dict) -> None:
    """Write recorded bytes verbatim: params bytes (str, bytes or a list of writes), pause
    (seconds after each write, or a list: after the first, the second, ...)."""
    pieces = params.get("bytes", b"")
    if not isinstance(pieces, list):
        pieces = [pieces]
    headers = params.get("headers", {"content-type": "text/event-stream;charset=utf-8"})
    pairs = headers.items() if isinstance(headers, dict) else headers
    await send(
        {
            "type": "http.response.start",
            "status": int(params.get("status", 200)),
            "headers": [(k.encode(), v.encode()) for k, v in pairs],
        }
    )
    pauses = params.get("pause") or 0
    if not isinstance(pauses, list):
        pauses = [pauses] * len(pieces)
    for piece, pause in zip(pieces, pauses + [0] * len(pieces), strict=False):
        data = piece.encode() if isinstance(piece, str) else piece
        await send({"type": "http.response.body", "body": data, "more_body": True})
        if pause:
            await asyncio.sleep(float(pause))
    if params.get("abort"):
        raise _Abort("raw abort")
    await send({"type": "http.response.body", "body": b"", "more_body": False})
