"""Running turns' partial answers and Stop requests, handled by one thread per worker process.

A streaming turn notes its answer so far here instead of updating its row itself: one thread
writes every noted turn each PORTAL_CHECKPOINT_SECONDS, in one batch of plain UPDATEs on one
database connection. A thousand turns streaming at once would otherwise hold a thousand
connections (PostgreSQL allows 100 by default), and Django's bulk_update (a CASE per column
per row) cost the worker more CPU than reading the answers. The answer streams in Redis hold
every word anyway, so the sweeper recovers a lost worker's answer from there
(services.sweep_turns); checkpoints are what is left when Redis lost them too.

The same thread asks Redis, every CANCEL_POLL_SECONDS and in one round trip, which running
turns the user stopped, so a turn checks a set in memory between tokens instead of asking
Redis itself; and every HEARTBEAT_SECONDS it marks all of them alive, even while FastGPT is
silent (a slow first token can take minutes). A killed worker stops beating, which is what the
sweeper sees.

Only running turns are written: the final state is written by the turn itself, and a checkpoint
that arrives after it must not overwrite it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

log = logging.getLogger("fastgpt_portal.chat")

CANCEL_POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 15.0


class Checkpointer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, str, datetime | None]] = {}
        self._watched: dict[int, str] = {}  # running turn -> its cancel key
        self._cancelled: set[int] = set()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="checkpoints", daemon=True)
            self._thread.start()

    def watch(self, turn_pk: int, cancel_key: str) -> None:
        """Follow a running turn's Stop requests until discard()."""
        with self._lock:
            self._watched[turn_pk] = cancel_key
            self._cancelled.discard(turn_pk)
            self._ensure_thread()

    def cancelled(self, turn_pk: int) -> bool:
        """Whether the user stopped the turn (as of the last poll)."""
        return turn_pk in self._cancelled

    def note(
        self, turn_pk: int, *, answer: str, reasoning: str, first_token_at: datetime | None
    ) -> None:
        """Remember the latest partial answer of a running turn; written within one interval."""
        with self._lock:
            self._pending[turn_pk] = (answer, reasoning, first_token_at)
            self._ensure_thread()

    def discard(self, turn_pk: int) -> None:
        """The turn is about to write its final state itself."""
        with self._lock:
            self._pending.pop(turn_pk, None)
            self._watched.pop(turn_pk, None)
            self._cancelled.discard(turn_pk)

    def _loop(self) -> None:
        last_flush = last_beat = time.monotonic()
        while not self._stop.wait(min(CANCEL_POLL_SECONDS, settings.PORTAL_CHECKPOINT_SECONDS)):
            _guarded(self.poll_cancels, "reading Stop requests")
            now = time.monotonic()
            if now - last_flush >= settings.PORTAL_CHECKPOINT_SECONDS:
                last_flush = now
                _guarded(self.flush, "writing answer checkpoints")
            if now - last_beat >= HEARTBEAT_SECONDS:
                last_beat = now
                _guarded(self.beat, "marking running turns alive")

    def poll_cancels(self) -> None:
        from fastgpt_portal.chat import relay

        with self._lock:
            watched = list(self._watched.items())
        if not watched:
            return
        flags = relay.sync_redis().mget([key for _, key in watched])
        stopped = {pk for (pk, _), flag in zip(watched, flags, strict=True) if flag}
        with self._lock:
            # Only turns still watched: one that finished meanwhile is gone from the set.
            self._cancelled |= stopped & self._watched.keys()

    def beat(self) -> None:
        from fastgpt_portal.chat.models import Turn

        with self._lock:
            running = list(self._watched)
        if running:
            Turn.objects.filter(pk__in=running, status=Turn.Status.RUNNING).update(
                heartbeat_at=timezone.now()
            )

    def flush(self) -> int:
        from fastgpt_portal.chat.models import Turn

        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        now = timezone.now()
        rows = [
            (answer, reasoning, now, first, pk)
            for pk, (answer, reasoning, first) in pending.items()
        ]
        table = Turn._meta.db_table
        with connection.cursor() as cursor:
            # executemany: psycopg pipelines the statements, one round trip for the batch.
            cursor.executemany(
                f"UPDATE {table} SET answer = %s, reasoning = %s, heartbeat_at = %s,"  # noqa: S608
                " first_token_at = COALESCE(%s, first_token_at)"
                f" WHERE id = %s AND status = '{Turn.Status.RUNNING}'",
                rows,
            )
        return len(pending)


def _guarded(step: Callable[[], object], what: str) -> None:
    """One step of the loop; a failure is logged and the next interval tries again."""
    try:
        step()
    except Exception:
        log.exception("%s failed", what)
        close_old_connections()


checkpoints = Checkpointer()
