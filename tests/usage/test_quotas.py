"""Quotas and limits as quota_check() applies them: what counts, which quota wins, what the
user is told. `now` is fixed (conftest.NOW: 30 November 2026, 15:30 UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction

from fastgpt_portal.accounts.services import identity_for
from fastgpt_portal.usage.models import Quota
from fastgpt_portal.usage.selectors import limits_for_user, quota_summary_for_user
from fastgpt_portal.usage.services import QuotaExceeded, quota_check
from tests.usage.conftest import NOW

pytestmark = pytest.mark.django_db


def refusal(user, **kwargs) -> QuotaExceeded:
    with pytest.raises(QuotaExceeded) as info:
        quota_check(user=user, now=NOW, **kwargs)
    return info.value


def allowed(user, **kwargs) -> bool:
    quota_check(user=user, now=NOW, **kwargs)
    return True


# Unlimited by default


def test_everyone_is_unlimited_by_default(alice, make_turns):
    make_turns(alice, 200, points=1000.0)
    make_turns(alice, 50, status="running")
    assert allowed(alice)
    assert quota_summary_for_user(user=alice, now=NOW) is None


def test_a_quota_with_only_blank_limits_is_unlimited(alice, make_turns):
    Quota.objects.create(user=alice)
    make_turns(alice, 50, status="queued")
    assert allowed(alice)


# Messages per day


def test_it_refuses_the_eleventh_message_of_the_day(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=10)
    make_turns(alice, 9, at=NOW - timedelta(hours=15))  # 00:30 today
    assert allowed(alice)
    make_turns(alice, 1)
    assert refusal(alice).kind == "day"


def test_the_daily_refusal_says_which_limit_and_when_to_come_back(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=10)
    make_turns(alice, 10)
    error = refusal(alice)
    assert error.messages == [
        "You have reached your daily limit of 10 messages. "
        "You can send again tomorrow from 00:00 (UTC)."
    ]
    assert error.retry_at == datetime(2026, 12, 1, tzinfo=UTC)
    assert isinstance(error, ValidationError), "the send view shows ValidationErrors"


def test_yesterdays_messages_do_not_count_against_today(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=10)
    make_turns(alice, 10, at=datetime(2026, 11, 29, 23, 59, tzinfo=UTC))
    assert allowed(alice)


def test_today_is_counted_in_the_portals_time_zone(alice, make_turns, settings):
    Quota.objects.create(user=alice, turns_per_day=3)
    # 14:50 UTC is 23:50 in Tokyo, the day before NOW there (00:30 on 1 December).
    make_turns(alice, 3, at=datetime(2026, 11, 30, 14, 50, tzinfo=UTC))
    assert refusal(alice).kind == "day", "in UTC these three were sent today"
    settings.TIME_ZONE = "Asia/Tokyo"
    assert allowed(alice)
    make_turns(alice, 3)
    error = refusal(alice)
    assert "tomorrow from 00:00 (Asia/Tokyo)" in error.messages[0]
    assert error.retry_at == datetime(2026, 12, 1, 15, 0, tzinfo=UTC)


def test_failed_and_cancelled_messages_count_as_sent(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=2)
    make_turns(alice, 1, status="failed")
    make_turns(alice, 1, status="cancelled")
    assert refusal(alice).kind == "day"


# FastGPT points per month


def test_it_refuses_once_the_months_points_are_used(alice, make_turns):
    Quota.objects.create(user=alice, points_per_month=100)
    make_turns(alice, 1, at=datetime(2026, 11, 1, 0, 0, tzinfo=UTC), points=60.0)
    make_turns(alice, 1, points=39.99)
    assert allowed(alice)
    make_turns(alice, 1, points=0.01)
    error = refusal(alice)
    assert error.kind == "month"
    assert error.messages == [
        "You have used 100 of your 100 FastGPT points for this month. "
        "You can send again from 1 December 2026, 00:00 (UTC)."
    ]
    assert error.retry_at == datetime(2026, 12, 1, tzinfo=UTC)


def test_last_months_points_do_not_count(alice, make_turns):
    Quota.objects.create(user=alice, points_per_month=100)
    make_turns(alice, 1, at=datetime(2026, 10, 31, 23, 59, tzinfo=UTC), points=500.0)
    assert allowed(alice)


def test_the_month_refusal_wins_over_the_daily_one_because_it_lasts_longer(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=1, points_per_month=1, turns_per_minute=1)
    make_turns(alice, 1, points=5.0)
    assert refusal(alice).kind == "month"


# Messages per minute


def test_it_refuses_the_sixth_message_within_a_minute_and_says_how_long_to_wait(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_minute=5)
    for seconds_ago in (50, 40, 30, 20, 10):
        make_turns(alice, 1, at=NOW - timedelta(seconds=seconds_ago))
    error = refusal(alice)
    assert error.kind == "minute"
    assert error.messages == [
        "You can send at most 5 messages a minute. You can send again in 10 seconds."
    ]
    assert error.retry_at == NOW + timedelta(seconds=10)


def test_messages_older_than_a_minute_do_not_count_against_the_rate(alice, make_turns):
    # With a daily limit too, the turns of the whole day are read in one query.
    Quota.objects.create(user=alice, turns_per_minute=5, turns_per_day=100)
    make_turns(alice, 4, at=NOW - timedelta(seconds=5))
    make_turns(alice, 10, at=NOW - timedelta(seconds=61))
    assert allowed(alice)


def test_with_a_lowered_rate_the_wait_counts_until_enough_messages_leave_the_window(
    alice, make_turns
):
    # Three sent in the last minute, then the admin lowered the limit to two: one more may go
    # only once two of them have left the window, the second oldest at NOW - 30 s.
    Quota.objects.create(user=alice, turns_per_minute=2)
    for seconds_ago in (50, 30, 5):
        make_turns(alice, 1, at=NOW - timedelta(seconds=seconds_ago))
    assert refusal(alice).retry_at == NOW + timedelta(seconds=30)


# Answers at a time


def test_it_refuses_a_message_beyond_the_concurrent_cap(alice, make_turns):
    Quota.objects.create(user=alice, max_concurrent=2)
    make_turns(alice, 5, status="done")
    queued, running = make_turns(alice, 1, status="queued") + make_turns(alice, 1, status="running")
    error = refusal(alice)
    assert error.kind == "concurrent"
    assert error.messages == [
        "You already have 2 answers in progress, and your limit is 2 at a time. "
        "You can send again as soon as one finishes (or you stop one)."
    ]
    assert error.retry_at is None
    type(running).objects.filter(pk=running.pk).update(status="done")
    assert allowed(alice)


def test_old_live_turns_count_against_the_concurrent_cap(alice, make_turns):
    Quota.objects.create(user=alice, max_concurrent=1)
    make_turns(alice, 1, status="running", at=NOW - timedelta(days=40))
    assert refusal(alice).messages[0].startswith("You already have an answer in progress")


# Zero


@pytest.mark.parametrize(
    ("field", "what"),
    [
        ("turns_per_day", "your daily message limit"),
        ("points_per_month", "your monthly FastGPT points limit"),
        ("turns_per_minute", "your per-minute message limit"),
        ("max_concurrent", "your limit of answers at a time"),
    ],
)
def test_a_limit_of_zero_switches_sending_off(alice, field, what):
    Quota.objects.create(user=alice, **{field: 0})
    error = refusal(alice)
    assert error.kind == "off"
    assert error.messages == [
        f"Sending is switched off for your account ({what} is 0). Ask an administrator."
    ]


# Which quota applies


def test_a_personal_quota_overrides_a_stricter_group_quota(alice, make_turns, group_of):
    Quota.objects.create(group=group_of("Interns", alice), turns_per_day=2)
    Quota.objects.create(user=alice, turns_per_day=5)
    make_turns(alice, 4)
    assert allowed(alice)


def test_a_personal_quota_overrides_a_more_generous_group_quota(alice, make_turns, group_of):
    Quota.objects.create(group=group_of("Staff", alice), turns_per_day=100)
    Quota.objects.create(user=alice, turns_per_day=2)
    make_turns(alice, 2)
    assert refusal(alice).kind == "day"


def test_a_blank_personal_limit_is_unlimited_even_when_a_group_sets_one(
    alice, make_turns, group_of
):
    Quota.objects.create(group=group_of("Interns", alice), turns_per_day=2, max_concurrent=1)
    Quota.objects.create(user=alice, max_concurrent=5)
    make_turns(alice, 10)
    assert allowed(alice)


def test_among_several_groups_the_most_generous_limit_applies(alice, group_of):
    Quota.objects.create(
        group=group_of("Sales", alice), turns_per_day=5, points_per_month=10, max_concurrent=3
    )
    Quota.objects.create(
        group=group_of("Support", alice), turns_per_day=20, points_per_month=None, max_concurrent=1
    )
    Quota.objects.create(group=group_of("Legal"), turns_per_day=1000)  # alice is not a member
    limits = limits_for_user(user=alice)
    assert limits.turns_per_day == 20
    assert limits.points_per_month is None, "blank (unlimited) is the most generous"
    assert limits.max_concurrent == 3
    assert limits.turns_per_minute is None, "no group limits it"


def test_the_site_default_applies_only_to_users_without_another_quota(
    alice, bob, make_turns, group_of
):
    Quota.objects.create(turns_per_day=1)
    Quota.objects.create(group=group_of("Support", bob), turns_per_day=10)
    make_turns(alice, 1)
    make_turns(bob, 1)
    assert refusal(alice).kind == "day"
    assert allowed(bob)


def test_other_users_messages_do_not_count(alice, bob, make_turns):
    Quota.objects.create(turns_per_day=3, points_per_month=10, turns_per_minute=3, max_concurrent=1)
    make_turns(bob, 5, status="running", points=50.0)
    assert allowed(alice)


# Retry


def test_a_retry_is_not_a_new_message_of_the_day(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=2)
    make_turns(alice, 1)
    make_turns(alice, 1, status="failed")
    assert refusal(alice).kind == "day"
    assert allowed(alice, retry=True)


def test_a_retry_respects_the_concurrent_cap_the_rate_and_the_points(alice, make_turns):
    quota = Quota.objects.create(user=alice, max_concurrent=1)
    make_turns(alice, 1, status="running")
    make_turns(alice, 1, status="failed", at=NOW - timedelta(hours=1))
    assert refusal(alice, retry=True).kind == "concurrent"
    quota.max_concurrent, quota.turns_per_minute = None, 1
    quota.save()
    assert refusal(alice, retry=True).kind == "minute"
    quota.turns_per_minute, quota.points_per_month = None, 0.5
    quota.save()
    make_turns(alice, 1, points=1.0, at=NOW - timedelta(hours=2))
    assert refusal(alice, retry=True).kind == "month"


def test_a_daily_limit_of_zero_stops_retries_too(alice, make_turns):
    Quota.objects.create(user=alice, turns_per_day=0)
    make_turns(alice, 1, status="failed")
    assert refusal(alice, retry=True).kind == "off"


# The rows themselves


def test_a_quota_belongs_to_a_user_or_a_group_not_both(alice, group_of):
    group = group_of("Staff")
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(user=alice, group=group, turns_per_day=1)
    with pytest.raises(ValidationError, match="not both"):
        Quota(user=alice, group=group).full_clean()


def test_there_is_only_one_site_default(db):
    Quota.objects.create(turns_per_day=10)
    with pytest.raises(IntegrityError), transaction.atomic():
        Quota.objects.create(turns_per_day=20)
    with pytest.raises(ValidationError, match="already a site-wide default"):
        Quota(turns_per_day=20).full_clean()


def test_the_scope_follows_the_user_or_group(alice, group_of):
    assert Quota.objects.create(user=alice).scope == "user"
    assert Quota.objects.create(group=group_of("Staff")).scope == "group"
    assert Quota.objects.create().scope == "default"


# Cost


def test_an_unlimited_user_costs_one_query(alice, make_turns, django_assert_num_queries):
    make_turns(alice, 3)
    with django_assert_num_queries(1):
        quota_check(user=alice, now=NOW)


def test_a_check_of_every_limit_costs_four_queries_one_the_lock(
    alice, make_turns, group_of, django_assert_num_queries
):
    Quota.objects.create(
        group=group_of("Staff", alice),
        turns_per_day=10,
        points_per_month=10,
        turns_per_minute=10,
        max_concurrent=10,
    )
    make_turns(alice, 3)
    identity_for(alice)  # made by the user's first message
    with django_assert_num_queries(4) as queries:
        quota_check(user=alice, now=NOW)
    lock = queries.captured_queries[1]["sql"]
    assert '"accounts_identity"' in lock
    # SQLite has no row locks; its IMMEDIATE transactions serialise writers instead.
    assert ("FOR UPDATE" in lock) == connection.features.has_select_for_update


def test_an_unlimited_user_costs_one_query_and_takes_no_lock(alice, django_assert_num_queries):
    with django_assert_num_queries(1) as queries:
        assert quota_check(user=alice, now=NOW) is None
    assert "FOR UPDATE" not in queries.captured_queries[0]["sql"]
