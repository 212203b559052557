"""The only code that creates a customUid."""

from __future__ import annotations

import re
import secrets

from django.conf import settings
from django.db import IntegrityError, transaction

from fastgpt_portal.accounts.models import MAX_UID_BYTES, Identity, User


def _clean(raw: str) -> str:
    # Keep it readable in FastGPT's logs, but FastGPT-safe: drop | / \ and control characters.
    cleaned = re.sub(r"[|/\\\x00-\x1f\x7f]", "", raw).strip()
    encoded = cleaned.encode()[: MAX_UID_BYTES - 8]  # room for a clash suffix
    return encoded.decode(errors="ignore")


def _base_uid(user: User, strategy: str) -> str:
    if strategy == "email" and user.email:
        value = _clean(user.email.lower())
    elif strategy == "opaque":
        value = ""
    else:
        value = _clean(user.get_username())
    return value or f"u-{secrets.token_hex(12)}"


def identity_for(user: User, *, strategy: str | None = None) -> Identity:
    """Return the user's identity, creating it on first use. Clashes get a numeric suffix."""
    try:
        return user.identity
    except Identity.DoesNotExist:
        pass
    strategy = strategy or settings.PORTAL_CUSTOM_UID
    base = _base_uid(user, strategy)
    candidate = base
    for attempt in range(1, 50):
        try:
            with transaction.atomic():
                identity = Identity.objects.create(
                    user=user, custom_uid=candidate, strategy=strategy
                )
            user.identity = identity
            return identity
        except IntegrityError:
            existing = Identity.objects.filter(user=user).first()
            if existing:  # another request created it first
                user.identity = existing
                return existing
            candidate = f"{base}-{attempt + 1}"
    raise RuntimeError("could not find a free customUid")  # pragma: no cover
