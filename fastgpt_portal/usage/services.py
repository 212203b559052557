"""Quotas and limits, checked before a question is queued."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from fastgpt_portal.accounts.models import User


class QuotaExceeded(ValidationError):
    """The user may not send now; the message says why and when they can again."""


def quota_check(*, user: User) -> None:
    """Raise QuotaExceeded if `user` may not queue another turn now.

    Called by chat.services.turn_submit inside its transaction, after the user's Identity row
    is locked, so two simultaneous submits by one user are checked one after the other.
    """
    return None
