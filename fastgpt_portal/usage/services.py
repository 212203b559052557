"""Quotas and limits, checked before a question is queued."""

from __future__ import annotations

import math
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from fastgpt_portal.accounts.models import Identity, User
from fastgpt_portal.accounts.services import identity_for
from fastgpt_portal.usage.selectors import (
    Limits,
    Periods,
    QuotaSummary,
    Usage,
    format_points,
    limits_for_user,
    plural,
    rate_window_frees_at,
    usage_for_user,
)


class QuotaExceeded(ValidationError):
    """The user may not send now; the message says which limit and when they can again.

    `kind` is the limit ("month", "day", "minute", "concurrent", or "off" for a limit of 0) and
    `retry_at` the moment the user may send again (None when that depends on an answer
    finishing, or on an administrator).
    """

    def __init__(self, message: str, *, kind: str, retry_at: datetime | None = None) -> None:
        super().__init__(message, code=f"quota_{kind}")
        self.kind = kind
        self.retry_at = retry_at


def _switched_off(what: str) -> QuotaExceeded:
    return QuotaExceeded(
        f"Sending is switched off for your account ({what} is 0). Ask an administrator.",
        kind="off",
    )


def _lock_user(user: User) -> None:
    if not connection.in_atomic_block:
        return  # nothing to hold a lock for; a lone check needs none
    if not Identity.objects.select_for_update().filter(user_id=user.pk).values("pk"):
        identity = identity_for(user)
        Identity.objects.select_for_update().only("pk").get(pk=identity.pk)


def quota_check(
    *, user: User, retry: bool = False, now: datetime | None = None, limits: Limits | None = None
) -> QuotaSummary | None:
    """Raise QuotaExceeded if `user` may not queue another turn now.

    Returns what will be left once the turn is queued (None for an unlimited user), so the
    page can show it without counting again.

    Called by chat.services.turn_submit inside its transaction. When any limit applies it locks
    the user's Identity row (made here if need be) until that transaction ends, so two
    simultaneous submits by one user are checked one after the other. An unlimited user has
    nothing to check and costs one query, with no lock.

    `limits`: the user's limits if the caller has just read them (limits_for_user()).

    `retry=True` is for the Retry button, which re-runs an existing turn: it is not a new
    message of the day, but it costs points and capacity again, so every other limit applies.

    Limits are checked from the one that frees last to the one that frees first, so the time
    in the message is when the user can really send again.
    """
    if limits is None:
        limits = limits_for_user(user=user)
    if limits.unlimited:
        return None
    _lock_user(user)
    periods = Periods.around(now or timezone.now())
    used = usage_for_user(user=user, limits=limits, periods=periods)
    zone = timezone.get_default_timezone_name()

    if (limit := limits.points_per_month) is not None and used.points_month >= limit:
        if limit == 0:
            raise _switched_off("your monthly FastGPT points limit")
        starts = periods.next_month
        raise QuotaExceeded(
            f"You have used {format_points(used.points_month)} of your "
            f"{format_points(limit)} FastGPT points for this month. "
            f"You can send again from {starts.day} {starts:%B %Y}, 00:00 ({zone}).",
            kind="month",
            retry_at=periods.next_month,
        )
    if (limit := limits.turns_per_day) is not None and limit == 0:
        # Even a retry: 0 is how an administrator stops someone from sending.
        raise _switched_off("your daily message limit")
    if not retry and limit is not None and used.turns_today >= limit:
        raise QuotaExceeded(
            f"You have reached your daily limit of {plural(limit, 'message')}. "
            f"You can send again tomorrow from 00:00 ({zone}).",
            kind="day",
            retry_at=periods.next_day,
        )
    if (limit := limits.turns_per_minute) is not None and used.turns_last_minute >= limit:
        if limit == 0:
            raise _switched_off("your per-minute message limit")
        frees_at = rate_window_frees_at(user=user, limit=limit, periods=periods)
        seconds = max(1, math.ceil((frees_at - periods.now).total_seconds()))
        raise QuotaExceeded(
            f"You can send at most {plural(limit, 'message')} a minute. "
            f"You can send again in {plural(seconds, 'second')}.",
            kind="minute",
            retry_at=frees_at,
        )
    if (limit := limits.max_concurrent) is not None and used.live >= limit:
        if limit == 0:
            raise _switched_off("your limit of answers at a time")
        in_progress = "an answer" if used.live == 1 else f"{used.live:,} answers"
        raise QuotaExceeded(
            f"You already have {in_progress} in progress, and your limit is {limit:,} at a "
            "time. You can send again as soon as one finishes (or you stop one).",
            kind="concurrent",
        )
    return QuotaSummary(
        limits=limits,
        usage=Usage(
            turns_today=used.turns_today + (0 if retry else 1),
            points_month=used.points_month,
            turns_last_minute=used.turns_last_minute + 1,
            live=used.live + 1,
        ),
    )
