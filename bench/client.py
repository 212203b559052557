"""The load-generating client: browser-like portal turns and direct calls to the double.

Runs in its own process (`python -m bench.client < plan.json > results.json`) so that its CPU
is not the portal's and several can run side by side. A plan is a JSON object:

    {"web": [host, port], "double": [host, port], "key": "...", "start_at": <monotonic>,
     "jobs": [{"kind": "portal"|"direct"|"session", "at": <seconds after start_at>, ...}]}

A portal turn does what htmx does: POST /chat/send (form fields text, app or conversation;
session cookie, CSRF header, HX-Request), then GET the event stream the answer names.
"""

from __future__ import annotations

import asyncio
import html
import json
import re
import sys
import time
from typing import Any
from urllib.parse import urlencode

from bench.httpc import SSEEvent, SSEParser, request

_SSE_URL = re.compile(rb'sse-connect="(/chat/turns/(\d+)/events)"')
_CONVERSATION = re.compile(rb'id="conversation-field" value="(\d+)"')


def _form_headers(user: dict[str, str], web: tuple[str, int]) -> dict[str, str]:
    return {
        "Cookie": user["cookie"],
        "X-CSRFToken": user["csrf"],
        "HX-Request": "true",
        "Origin": f"http://{web[0]}:{web[1]}",
        "Content-Type": "application/x-www-form-urlencoded",
    }


async def portal_turn(
    web: tuple[str, int],
    user: dict[str, str],
    text: str,
    *,
    app: str = "",
    conversation: int | None = None,
    time_limit: float = 120.0,
) -> dict[str, Any]:
    """One question through the portal, read to its `done` event, with timings."""
    result: dict[str, Any] = {"kind": "portal", "text": text, "error": ""}
    fields = {"text": text}
    if conversation:
        fields["conversation"] = str(conversation)
    else:
        fields["app"] = app
    t0 = time.monotonic()
    result["t0"] = t0
    try:
        sent = await request(
            web[0], web[1], "POST", "/chat/send", _form_headers(user, web),
            urlencode(fields).encode(), time_limit=time_limit,
        )  # fmt: skip
    except Exception as exc:
        result["error"] = f"send: {type(exc).__name__}: {exc}"
        return result
    result["t_sent"] = time.monotonic()
    found = _SSE_URL.search(sent.body)
    if sent.status != 200 or not found:
        result["error"] = f"send: HTTP {sent.status}: {sent.body[:200]!r}"
        return result
    result["turn"] = int(found.group(2))
    conv = _CONVERSATION.search(sent.body)
    result["conversation"] = int(conv.group(1)) if conv else conversation
    deltas: list[tuple[float, int]] = []  # (arrival, answer length so far)
    ids: list[str] = []
    parts: list[str] = []
    state: dict[str, Any] = {"length": 0}
    finished = asyncio.get_running_loop().create_future()

    def on_event(event: SSEEvent) -> None:
        now, name, data, ident = event
        if ident and ident != "done":
            ids.append(ident)
        if name == "delta":
            piece = html.unescape(data)
            parts.append(piece)
            state["length"] += len(piece)
            deltas.append((now, state["length"]))
        elif name == "done":
            result["t_done"] = now
            result["done_bytes"] = len(data)
            result["done_ok"] = f'id="turn-{result["turn"]}"' in data
            if not finished.done():
                finished.set_result(True)

    parser = SSEParser(on_event)
    headers = {"Cookie": user["cookie"], "Accept": "text/event-stream", "Cache-Control": "no-cache"}
    stream = asyncio.ensure_future(
        request(
            web[0],
            web[1],
            "GET",
            found.group(1).decode(),
            headers,
            on_body=parser.feed,
            time_limit=time_limit,
        )  # fmt: skip
    )
    try:
        await asyncio.wait_for(
            asyncio.wait({stream, finished}, return_when="FIRST_COMPLETED"), time_limit
        )
    except TimeoutError:
        result["error"] = "timeout: no done event"
    if finished.done():
        stream.cancel()
    elif stream.done() and stream.exception() is not None:
        result["error"] = f"stream: {stream.exception()!r}"
    elif not result["error"]:
        result["error"] = "stream ended without a done event"
    if not stream.done():
        stream.cancel()
    result["answer"] = "".join(parts)
    result["deltas"] = deltas
    # A turn that finished before its stream was opened arrives whole, in the done event.
    result["t_first"] = deltas[0][0] if deltas else result.get("t_done")
    result["ids"] = len(ids)
    result["duplicate_ids"] = len(ids) - len(set(ids))
    result["ordered_ids"] = all(_id_key(a) < _id_key(b) for a, b in zip(ids, ids[1:], strict=False))
    return result


def _id_key(ident: str) -> tuple[int, int]:
    ms, _, seq = ident.partition("-")
    return int(ms), int(seq or 0)


async def direct_call(
    double: tuple[str, int], key: str, text: str, *, time_limit: float = 60.0
) -> dict:
    """The same question straight to the double, as the worker asks it; first token timed."""
    result: dict[str, Any] = {"kind": "direct", "text": text, "error": ""}
    body = json.dumps(
        {
            "chatId": f"bench-direct-{time.monotonic_ns()}",
            "stream": True,
            "detail": True,
            "messages": [{"role": "user", "content": text}],
        }
    ).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
    }
    parts: list[str] = []
    deltas: list[tuple[float, int]] = []
    length = 0

    def on_event(event: SSEEvent) -> None:
        nonlocal length
        now, name, data, _ = event
        if name == "answer" and data != "[DONE]":
            content = (json.loads(data)["choices"][0].get("delta") or {}).get("content")
            if content:
                parts.append(content)
                length += len(content)
                deltas.append((now, length))

    parser = SSEParser(on_event)
    t0 = result["t0"] = time.monotonic()
    try:
        await request(
            double[0], double[1], "POST", "/api/v1/chat/completions", headers, body,
            on_body=parser.feed, time_limit=time_limit,
        )  # fmt: skip
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"
    result["t_done"] = time.monotonic()
    result["t_first"] = deltas[0][0] if deltas else None
    result["answer"] = "".join(parts)
    result["deltas"] = deltas
    result["ttft"] = (deltas[0][0] - t0) if deltas else None
    return result


async def session(web: tuple[str, int], job: dict) -> list[dict]:
    """One user: several turns in one conversation, one after the other, with think time."""
    results = []
    conversation = None
    for i, text in enumerate(job["texts"]):
        if i and job.get("think"):
            await asyncio.sleep(job["think"])
        result = await portal_turn(
            web, job["user"], text, app=job.get("app", ""), conversation=conversation
        )
        result["user"] = job["user"]["username"]
        results.append(result)
        if result["error"] or not result.get("conversation"):
            break
        conversation = result["conversation"]
    return results


async def run_plan(plan: dict) -> list[dict]:
    web = tuple(plan.get("web") or ("127.0.0.1", 0))
    double = tuple(plan.get("double") or ("127.0.0.1", 0))
    start_at = plan.get("start_at") or time.monotonic()
    sequential = plan.get("sequential", False)
    results: list[dict] = []

    async def one(job: dict) -> None:
        delay = start_at + job.get("at", 0.0) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        kind = job["kind"]
        if kind == "portal":
            out = await portal_turn(web, job["user"], job["text"], app=job.get("app", ""))
            out["tag"] = job.get("tag")
            results.append(out)
        elif kind == "direct":
            out = await direct_call(double, plan["key"], job["text"])
            out["tag"] = job.get("tag")
            results.append(out)
        else:
            results.extend(await session(web, job))

    if sequential:
        for job in plan["jobs"]:
            await one(job)
    else:
        await asyncio.gather(*(one(job) for job in plan["jobs"]))
    return results


def main() -> None:
    plan = json.load(sys.stdin)
    results = asyncio.run(run_plan(plan))
    # The client's own CPU, so the table can show that it is not the bottleneck.
    json.dump({"cpu_s": time.process_time(), "results": results}, sys.stdout)


if __name__ == "__main__":
    main()
