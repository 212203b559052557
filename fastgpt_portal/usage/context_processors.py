from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from fastgpt_portal.usage.selectors import quota_summary_for_user


def quota(request: HttpRequest) -> dict:
    # Lazy: only pages that show the quota (the chat page and its `sent` partial) pay for the
    # queries; the admin, history and login pages never touch it.
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"quota_summary": None}
    return {"quota_summary": SimpleLazyObject(lambda: quota_summary_for_user(user=user))}
