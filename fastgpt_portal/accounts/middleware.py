"""AuthenticationMiddleware: Django's, with a current login read in two cheap statements.

django.contrib.auth.get_user() loads the user with the ORM, about 1 ms of CPU per request on
this machine (bench/RESULTS.md). Here the common case, a session of an active user logged in
with ModelBackend whose session hash is current, is decided with the user read through
lib.rows.RowLoader; everything else (no login, another backend, a user gone or deactivated, a
password changed since, a hash made with a SECRET_KEY_FALLBACKS key) goes to Django's
get_user(), which also does what those need (flush the session, or cycle its key). So this
path can accept less than Django, never more. request.auser() is Django's, unchanged.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import auth
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth import middleware as auth_middleware
from django.contrib.auth.models import AnonymousUser
from django.contrib.sessions.backends.base import SessionBase
from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.utils.crypto import constant_time_compare
from django.utils.functional import SimpleLazyObject

from fastgpt_portal.accounts.models import User
from fastgpt_portal.lib.rows import RowLoader

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"

users = RowLoader(User)


def login_user_id(session: SessionBase) -> Any:
    """The user id of a ModelBackend login held in `session`, else None."""
    try:
        user_id = User._meta.pk.to_python(session[SESSION_KEY])
        backend = session[BACKEND_SESSION_KEY]
    except (KeyError, ValidationError):
        return None
    if backend != MODEL_BACKEND or MODEL_BACKEND not in settings.AUTHENTICATION_BACKENDS:
        return None
    return user_id


def vouches_for(session: SessionBase, user: User) -> bool:
    """Whether Django's get_user() would return `user` for `session` as is.

    `user` needs only pk, password and is_active. A hash made with a SECRET_KEY_FALLBACKS key
    is False here: Django rewrites the session in that case, so it is left to it.
    """
    if user.pk is None or login_user_id(session) != user.pk:
        return False
    if not user.is_active:  # ModelBackend.user_can_authenticate()
        return False
    # A password change ends every other session.
    session_hash = session.get(HASH_SESSION_KEY)
    return bool(session_hash) and constant_time_compare(session_hash, user.get_session_auth_hash())


def current_user(request: HttpRequest) -> User | None:
    """The session's user if Django's get_user() would return it as is, else None."""
    user_id = login_user_id(request.session)
    if user_id is None:
        return None
    user = users.get(user_id)
    if user is None or not vouches_for(request.session, user):
        return None
    return user


def get_user(request: HttpRequest) -> User | AnonymousUser:
    if not hasattr(request, "_cached_user"):
        request._cached_user = current_user(request) or auth.get_user(request)
    return request._cached_user


class AuthenticationMiddleware(auth_middleware.AuthenticationMiddleware):
    def process_request(self, request: HttpRequest) -> None:
        super().process_request(request)
        request.user = SimpleLazyObject(lambda: get_user(request))
