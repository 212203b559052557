"""Server-sent events framing (https://html.spec.whatwg.org/multipage/server-sent-events.html)."""

from __future__ import annotations


def frame(
    data: str, event: str | None = None, id: str | None = None, retry: int | None = None
) -> bytes:
    """One SSE frame. Multi-line data becomes several data: lines, which the browser re-joins."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    if retry is not None:
        lines.append(f"retry: {retry}")
    # \r and \r\n are line ends too in SSE; normalise so nothing the model wrote can end a frame.
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        lines.append(f"data: {line}")
    return ("\n".join(lines) + "\n\n").encode()


def comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode()
