"""Thin Celery adapters around chat.services."""

from __future__ import annotations

import logging
import threading

from celery import shared_task
from django.db import close_old_connections
from django.utils import timezone

from fastgpt_portal.chat import services

log = logging.getLogger("fastgpt_portal.chat")

HEARTBEAT_SECONDS = 15.0


class _Heartbeat:
    """Marks this worker's running turns alive, even while FastGPT is silent (a slow first
    token can take minutes). A killed worker stops beating, which is what the sweeper sees."""

    def __init__(self) -> None:
        self.running: set[int] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, pk: int) -> None:
        with self.lock:
            self.running.add(pk)
            if self.thread is None:
                self.thread = threading.Thread(
                    target=self._loop, name="turn-heartbeat", daemon=True
                )
                self.thread.start()

    def discard(self, pk: int) -> None:
        with self.lock:
            self.running.discard(pk)

    def _loop(self) -> None:
        from fastgpt_portal.chat.models import Turn

        stop = threading.Event()
        while not stop.wait(HEARTBEAT_SECONDS):
            with self.lock:
                pks = list(self.running)
            if not pks:
                continue
            try:
                close_old_connections()
                Turn.objects.filter(pk__in=pks, status=Turn.Status.RUNNING).update(
                    heartbeat_at=timezone.now()
                )
            except Exception:
                log.exception("heartbeat for running turns failed")


heartbeat = _Heartbeat()


@shared_task(name="chat.run_turn", acks_late=True, ignore_result=True)
def run_turn(turn_pk: int) -> str:
    heartbeat.add(turn_pk)
    try:
        outcome = services.turn_run(turn_pk=turn_pk)
    finally:
        heartbeat.discard(turn_pk)
    if outcome.retry_in is not None:
        run_turn.apply_async((turn_pk,), countdown=outcome.retry_in)
    return outcome.status


@shared_task(name="chat.sweep_turns", ignore_result=True)
def sweep_turns() -> dict[str, int]:
    return services.sweep_turns()
