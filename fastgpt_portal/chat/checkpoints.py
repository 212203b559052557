"""Partial answers of running turns, written to the database by one thread per worker process.

A streaming turn notes its answer so far here instead of updating its row itself: one thread
writes every noted turn in one statement each PORTAL_CHECKPOINT_SECONDS, on one database
connection. A thousand turns streaming at once would otherwise hold a thousand connections
(PostgreSQL allows 100 by default) and send two thousand UPDATEs a second.

Only running turns are written: the final state is written by the turn itself, and a checkpoint
that arrives after it must not overwrite it.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

log = logging.getLogger("fastgpt_portal.chat")


class Checkpointer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, str, datetime | None]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def note(
        self, turn_pk: int, *, answer: str, reasoning: str, first_token_at: datetime | None
    ) -> None:
        """Remember the latest partial answer of a running turn; written within one interval."""
        with self._lock:
            self._pending[turn_pk] = (answer, reasoning, first_token_at)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="checkpoints", daemon=True)
                self._thread.start()

    def discard(self, turn_pk: int) -> None:
        """The turn is about to write its final state itself."""
        with self._lock:
            self._pending.pop(turn_pk, None)

    def _loop(self) -> None:
        while not self._stop.wait(settings.PORTAL_CHECKPOINT_SECONDS):
            try:
                self.flush()
            except Exception:
                log.exception("writing answer checkpoints failed")
                close_old_connections()

    def flush(self) -> int:
        from fastgpt_portal.chat.models import Turn

        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        now = timezone.now()
        with_first, without = [], []
        for pk, (answer, reasoning, first) in pending.items():
            turn = Turn(pk=pk, answer=answer, reasoning=reasoning, heartbeat_at=now)
            if first is not None:
                turn.first_token_at = first
                with_first.append(turn)
            else:
                without.append(turn)
        running = Turn.objects.filter(status=Turn.Status.RUNNING)
        fields = ["answer", "reasoning", "heartbeat_at"]
        if with_first:
            running.bulk_update(with_first, [*fields, "first_token_at"], batch_size=200)
        if without:
            running.bulk_update(without, fields, batch_size=200)
        return len(pending)


checkpoints = Checkpointer()
