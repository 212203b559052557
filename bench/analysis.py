"""Figures from what the clients saw and what the double recorded, matched turn by turn."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

_PIECE = re.compile(r"\s*\S+|\s+$")


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def pcts(values: Sequence[float], ps: Iterable[float] = (50, 95, 99)) -> dict[str, float]:
    return {f"p{int(p)}": percentile(values, p) for p in ps}


def peak_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The largest number of intervals open at one instant."""
    points = []
    for start, end in intervals:
        points.append((start, 1))
        points.append((end, -1))
    points.sort(key=lambda p: (p[0], p[1]))
    best = current = 0
    for _, step in points:
        current += step
        best = max(best, current)
    return best


def expected_answers(turn_rows: list[dict], chats: dict[str, dict]) -> dict[int, str]:
    """turn pk -> the answer text the double actually sent for it (its saved AI item)."""
    out = {}
    for row in turn_rows:
        chat = chats.get(row["chat_id"]) or {}
        for item in chat.get("items", []):
            if item.get("obj") == "AI" and item.get("dataId") == row["data_id"]:
                out[row["pk"]] = "".join(
                    v["text"]["content"] for v in item["value"] if v.get("type") == "text"
                )
    return out


@dataclass
class TurnCheck:
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def check_turns(
    results: list[dict], expected: dict[int, str], db_rows: dict[int, dict]
) -> TurnCheck:
    """Completed: done event, streamed text == what the double sent == the stored answer.

    Lost: submitted but never finished, or text missing from what was streamed or stored.
    Duplicated: an event id seen twice, or text longer than what the double sent.
    """
    check = TurnCheck()
    for r in results:
        pk = r.get("turn")
        want = expected.get(pk) if pk else None
        got = r.get("answer", "")
        row = db_rows.get(pk, {}) if pk else {}
        if r.get("duplicate_ids") or (want is not None and len(got) > len(want)):
            check.duplicated += 1
            check.errors.append(f"turn {pk}: duplicated events or text")
        elif r.get("error") or want is None or "t_done" not in r:
            check.lost += 1
            check.errors.append(f"turn {pk}: {r.get('error') or 'no answer from the double'}")
        elif not got and not r.get("deltas") and row.get("answer") == want and r.get("done_ok"):
            # It finished before its stream was opened: the done event carried it whole.
            check.completed += 1
        elif got != want or row.get("answer") != want or row.get("status") != "done":
            check.lost += 1
            check.errors.append(
                f"turn {pk}: status {row.get('status')}, streamed {len(got)} chars, "
                f"stored {len(row.get('answer') or '')}, sent {len(want)}"
            )
        elif not r.get("done_ok"):
            check.failed += 1
            check.errors.append(f"turn {pk}: the done event did not carry the turn")
        else:
            check.completed += 1
    return check


def chunk_latencies(result: dict, writes: list[float], answer: str) -> list[float]:
    """For each answer chunk the double wrote: when the client had read it, minus when written.

    `writes` holds one time per chunk (pieces of `answer` in order); the client's deltas hold
    (arrival, cumulative length) pairs.
    """
    deltas = result.get("deltas") or []
    if not deltas or not writes:
        return []
    pieces = _PIECE.findall(answer)
    if len(pieces) != len(writes):
        return []
    out = []
    end = 0
    d = 0
    for written, piece in zip(writes, pieces, strict=True):
        end += len(piece)
        while d < len(deltas) and deltas[d][1] < end:
            d += 1
        if d == len(deltas):
            break
        out.append(deltas[d][0] - written)
    return out


def fmt_ms(seconds: float) -> str:
    return "n/a" if seconds is None or math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def summarise_rates(
    results: list[dict], received: list[dict[str, Any]]
) -> tuple[float, float, int, int]:
    """(tokens/s the double wrote, tokens/s the clients read, tokens written, tokens read)."""
    writes = [w for entry in received for w in entry.get("writes") or []]
    read_times = []
    for r in results:
        deltas = r.get("deltas") or []
        if deltas:
            # One token per word: count the words each delta completed.
            words = len(_PIECE.findall(r.get("answer", "")))
            read_times.append((deltas[0][0], deltas[-1][0], words))
    sent = len(writes)
    sent_rate = sent / (max(writes) - min(writes)) if len(writes) > 1 else math.nan
    read = sum(w for _, _, w in read_times)
    if read_times:
        span = max(e for _, e, _ in read_times) - min(s for s, _, _ in read_times)
        read_rate = read / span if span > 0 else math.nan
    else:
        read_rate = math.nan
    return sent_rate, read_rate, sent, read
