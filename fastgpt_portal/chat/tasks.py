"""Thin Celery adapters around chat.services."""

from __future__ import annotations

from celery import shared_task

from fastgpt_portal.chat import services
from fastgpt_portal.chat.checkpoints import checkpoints


@shared_task(name="chat.run_turn", acks_late=True, ignore_result=True)
def run_turn(turn_pk: int) -> str:
    try:
        outcome = services.turn_run(turn_pk=turn_pk)
    finally:
        checkpoints.discard(turn_pk)  # however turn_run ended, stop following the turn
    if outcome.retry_in is not None:
        run_turn.apply_async((turn_pk,), countdown=outcome.retry_in)
    return outcome.status


@shared_task(name="chat.sweep_turns", ignore_result=True)
def sweep_turns() -> dict[str, int]:
    return services.sweep_turns()
