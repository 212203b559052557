"""The login forms, with throttling of repeated failures per username and client address.

Failures are counted in Django's cache (Redis), so every web process sees the same count. After
PORTAL_LOGIN_MAX_FAILURES failures within PORTAL_LOGIN_WINDOW_SECONDS, further attempts for that
username from that address are refused for the window, without the password being checked.
A successful login clears the count.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest

log = logging.getLogger("fastgpt_portal.accounts")

THROTTLED = "throttled"


def client_address(request: HttpRequest | None) -> str:
    """The address the request came from, as far as this process can trust it.

    Behind PORTAL_PROXY_COUNT reverse proxies, the client is the entry that many places from
    the right of X-Forwarded-For (the proxies append; anything further left is the client's
    own claim and can be forged).
    """
    if request is None:
        return ""
    hops = settings.PORTAL_PROXY_COUNT
    if hops:
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        forwarded = [a for a in forwarded if a]
        if len(forwarded) >= hops:
            return forwarded[-hops]
    return request.META.get("REMOTE_ADDR", "")


def _keys(username: str, address: str) -> tuple[str, str]:
    # Hashed: usernames may contain characters memcached-style keys dislike, and the cache
    # has no business holding them in clear.
    digest = hashlib.sha256(f"{username.strip().casefold()}\0{address}".encode()).hexdigest()
    return f"login-failures:{digest}", f"login-locked:{digest}"


def throttle_wait(username: str, address: str) -> int:
    """Seconds until this username may try again from this address; 0 if it may now."""
    _, locked_key = _keys(username, address)
    try:
        until = cache.get(locked_key)
    except Exception:
        # A lost cache must not lock everyone out; chat needs Redis anyway, so it is noticed.
        log.exception("login throttle: the cache is unavailable; not throttling")
        return 0
    return max(0, math.ceil(until - time.time())) if until else 0


def throttle_failure(username: str, address: str) -> int:
    """Count one failed attempt; returns the seconds of the lockout it started, or 0."""
    failures_key, locked_key = _keys(username, address)
    window = settings.PORTAL_LOGIN_WINDOW_SECONDS
    try:
        # The window starts at the first failure; incr keeps the count atomic across processes.
        if cache.add(failures_key, 1, timeout=window):
            count = 1
        else:
            try:
                count = cache.incr(failures_key)
            except ValueError:  # the window ended between add() and incr()
                cache.set(failures_key, 1, timeout=window)
                count = 1
        if count < settings.PORTAL_LOGIN_MAX_FAILURES:
            return 0
        cache.set(locked_key, time.time() + window, timeout=window)
        cache.delete(failures_key)
    except Exception:
        log.exception("login throttle: the cache is unavailable; failure not counted")
        return 0
    log.warning(
        "login throttled: %d failed attempts for username %r from %s; refused for %d s",
        count, username[:150], address, window,
    )  # fmt: skip
    return window


def throttle_reset(username: str, address: str) -> None:
    try:
        cache.delete_many(_keys(username, address))
    except Exception:
        log.exception("login throttle: the cache is unavailable; count not reset")


def throttle_message(seconds: int) -> str:
    minutes = max(1, math.ceil(seconds / 60))
    return f"Too many failed attempts; try again in {minutes} minute{'s' if minutes != 1 else ''}."


class ThrottledLoginMixin:
    """For AuthenticationForm subclasses: refuse while locked, count failures, reset on success.

    `throttled` holds the message once the form refused an attempt, for the view's 429.
    """

    throttled: str = ""
    throttled_seconds: int = 0

    def clean(self) -> dict:
        username = self.cleaned_data.get("username") or ""
        address = client_address(self.request)
        wait = throttle_wait(username, address)
        if wait:
            # Refused before authenticate(): a locked-out attacker learns nothing, not even
            # whether the password was right.
            self.throttled, self.throttled_seconds = throttle_message(wait), wait
            raise forms.ValidationError(self.throttled, code=THROTTLED)
        try:
            cleaned = super().clean()
        except forms.ValidationError as exc:
            # Only a wrong username or password counts: the admin also says invalid_login to a
            # non-staff user whose password was right.
            if getattr(exc, "code", None) == "invalid_login" and self.user_cache is None:
                locked_for = throttle_failure(username, address)
                if locked_for:
                    self.throttled = throttle_message(locked_for)
                    self.throttled_seconds = locked_for
                    raise forms.ValidationError(self.throttled, code=THROTTLED) from exc
            raise
        throttle_reset(username, address)
        return cleaned


class LoginForm(ThrottledLoginMixin, AuthenticationForm):
    """The portal's login form (/accounts/login/)."""


class AdminLoginForm(ThrottledLoginMixin, AdminAuthenticationForm):
    """The admin's login form (/admin/login/): the same throttle, so there is no way around it."""
