"""Per-user reads of quotas and of what the user has used against them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from functools import cache

from django.db import connection
from django.db.models import Count, Q, Sum
from django.utils import timezone

from fastgpt_portal.accounts.models import User
from fastgpt_portal.chat.models import Turn
from fastgpt_portal.usage.models import Quota

RATE_WINDOW = timedelta(seconds=60)
LIVE = (Turn.Status.QUEUED, Turn.Status.RUNNING)


@dataclass(frozen=True)
class Limits:
    """The limits that apply to one user; None means unlimited."""

    turns_per_day: int | None = None
    points_per_month: float | None = None
    turns_per_minute: int | None = None
    max_concurrent: int | None = None

    @property
    def unlimited(self) -> bool:
        return all(getattr(self, name) is None for name in Quota.LIMIT_FIELDS)


@dataclass(frozen=True)
class Usage:
    """What the user has used, counted only for the limits that are set (else 0)."""

    turns_today: int = 0
    points_month: float = 0.0
    turns_last_minute: int = 0
    live: int = 0


@dataclass(frozen=True)
class Periods:
    """Calendar boundaries around `now`, in settings.TIME_ZONE."""

    now: datetime
    day_start: datetime
    next_day: datetime
    month_start: datetime
    next_month: datetime

    @classmethod
    def around(cls, now: datetime) -> Periods:
        tz = timezone.get_default_timezone()
        today = timezone.localtime(now, tz).date()
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        # combine() with the zone, not local midnight + 24 h, so a DST change keeps days whole.
        return cls(
            now=now,
            day_start=datetime.combine(today, time.min, tzinfo=tz),
            next_day=datetime.combine(today + timedelta(days=1), time.min, tzinfo=tz),
            month_start=datetime.combine(first, time.min, tzinfo=tz),
            next_month=datetime.combine(following, time.min, tzinfo=tz),
        )


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def format_points(value: float) -> str:
    """FastGPT points for people: 412.5, 0.03, 1,200 (at most two decimals)."""
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _most_generous(values: list) -> int | float | None:
    return None if any(v is None for v in values) else max(values)


@cache
def _LIMITS_SQL() -> str:  # noqa: N802 - a constant, built once the models are ready
    # Every send runs this. As a queryset (user OR user's groups OR default) the ORM spent
    # more time compiling it than PostgreSQL spent answering it, so it is written out once,
    # and read with a plain cursor: the limits are integers and floats, with nothing to convert.
    memberships = User.groups.through._meta.db_table
    meta = Quota._meta
    columns = ", ".join(meta.get_field(name).column for name in ("scope", *Quota.LIMIT_FIELDS))
    return (
        f"SELECT {columns} FROM {meta.db_table} WHERE user_id = %s"  # noqa: S608 - names
        f" OR group_id IN (SELECT group_id FROM {memberships} WHERE user_id = %s)"
        " OR scope = %s"
    )


def limits_for_user(*, user: User) -> Limits:
    """The limits that apply to `user`; the rule is models.PRECEDENCE_HELP. One query."""
    with connection.cursor() as cursor:
        cursor.execute(_LIMITS_SQL(), [user.pk, user.pk, Quota.Scope.DEFAULT])
        found = cursor.fetchall()
    by_scope: dict[str, list[tuple]] = {}
    for scope, *limits in found:
        by_scope.setdefault(scope, []).append(limits)
    names = Quota.LIMIT_FIELDS
    if own := by_scope.get(Quota.Scope.USER):
        return Limits(**dict(zip(names, own[0], strict=True)))
    if groups := by_scope.get(Quota.Scope.GROUP):
        return Limits(
            **{
                name: _most_generous([limits[i] for limits in groups])
                for i, name in enumerate(names)
            }
        )
    if default := by_scope.get(Quota.Scope.DEFAULT):
        return Limits(**dict(zip(names, default[0], strict=True)))
    return Limits()


def usage_for_user(*, user: User, limits: Limits, periods: Periods) -> Usage:
    """Count the user's turns, but only for the limits that are set: at most two queries.

    Turns are counted by queued_at, which a Retry moves to the time of the retry, so a retried
    turn counts once, on the day (and in the minute) it was last queued.
    """
    windows: dict[str, datetime] = {}
    aggregates = {}
    if limits.turns_per_day is not None:
        windows["day"] = periods.day_start
        aggregates["turns_today"] = Count("pk", filter=Q(queued_at__gte=periods.day_start))
    if limits.points_per_month is not None:
        windows["month"] = periods.month_start
        aggregates["points_month"] = Sum("points", filter=Q(queued_at__gte=periods.month_start))
    if limits.turns_per_minute is not None:
        minute_start = periods.now - RATE_WINDOW
        windows["minute"] = minute_start
        aggregates["turns_last_minute"] = Count("pk", filter=Q(queued_at__gt=minute_start))
    counted: dict = {}
    if aggregates:
        # One scan of the widest window the set limits need, narrowed per limit by the filters.
        counted = Turn.objects.filter(user=user, queued_at__gte=min(windows.values())).aggregate(
            **aggregates
        )
    live = 0
    if limits.max_concurrent is not None:
        live = Turn.objects.filter(user=user, status__in=LIVE).count()
    return Usage(
        turns_today=counted.get("turns_today") or 0,
        points_month=counted.get("points_month") or 0.0,
        turns_last_minute=counted.get("turns_last_minute") or 0,
        live=live,
    )


def rate_window_frees_at(*, user: User, limit: int, periods: Periods) -> datetime:
    """When the user's oldest turn in the last minute leaves the window, leaving room for one."""
    recent = list(
        Turn.objects.filter(user=user, queued_at__gt=periods.now - RATE_WINDOW)
        .order_by("-queued_at")
        .values_list("queued_at", flat=True)[: max(limit, 1)]
    )
    # With `limit` turns in the window, the limit-th newest must leave before one more fits.
    return recent[-1] + RATE_WINDOW if recent else periods.now


@dataclass(frozen=True)
class QuotaSummary:
    """What the chat page shows under the composer."""

    limits: Limits
    usage: Usage

    @property
    def turns_left_today(self) -> int | None:
        if self.limits.turns_per_day is None:
            return None
        return max(0, self.limits.turns_per_day - self.usage.turns_today)

    @property
    def points_left_month(self) -> float | None:
        if self.limits.points_per_month is None:
            return None
        return max(0.0, self.limits.points_per_month - self.usage.points_month)

    @property
    def parts(self) -> list[str]:
        """The summary in words, one part per limit that is set."""
        limits, parts = self.limits, []
        if (left := self.turns_left_today) is not None:
            parts.append(f"{left:,} of {plural(limits.turns_per_day, 'message')} left today")
        if (points_left := self.points_left_month) is not None:
            parts.append(
                f"{format_points(points_left)} of {format_points(limits.points_per_month)} "
                "FastGPT points left this month"
            )
        if limits.turns_per_minute is not None:
            parts.append(f"at most {plural(limits.turns_per_minute, 'message')} a minute")
        if limits.max_concurrent is not None:
            parts.append(f"{plural(limits.max_concurrent, 'answer')} at a time")
        return parts


def quota_summary_for_user(*, user: User, now: datetime | None = None) -> QuotaSummary | None:
    """The user's limits and what is left of them; None when the user is unlimited (or not
    logged in), so the page shows nothing."""
    if not user.is_authenticated:
        return None
    limits = limits_for_user(user=user)
    if limits.unlimited:
        return None
    periods = Periods.around(now or timezone.now())
    usage = usage_for_user(user=user, limits=limits, periods=periods)
    return QuotaSummary(limits=limits, usage=usage)
