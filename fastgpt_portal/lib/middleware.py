"""What the portal shows when something underneath it fails, and what error reports may show.

DatabaseUnavailableMiddleware turns a lost database into a plain 503 page (and one log line)
instead of a traceback or a generic 500. MalformedFormMiddleware refuses form posts that are
not UTF-8. SecretsExceptionReporterFilter keeps app keys and passwords out of error reports
(the technical 500 page and AdminEmailHandler's e-mails).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any
from urllib.parse import parse_qsl

from django.core.signals import got_request_exception
from django.db import InterfaceError, OperationalError
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template import loader
from django.utils.deprecation import MiddlewareMixin
from django.views import defaults
from django.views.debug import SafeExceptionReporterFilter

log = logging.getLogger("fastgpt_portal.db")

DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_AFTER_SECONDS = 60
UNAVAILABLE_MESSAGE = (
    "The portal's database is unavailable right now. Nothing was saved; try again in a minute."
)
_MARK = "_portal_database_error"


def _pool_busy(exc: BaseException) -> bool:
    """A pool timeout with every pooled connection open and in use is overload, not a lost
    database (a dead database times out the same way, while the pool is still trying to open
    its first connections)."""
    if type(exc.__cause__).__name__ != "PoolTimeout":
        return False
    try:
        from django.db import connection

        stats = connection.pool.get_stats()
    except Exception:
        return False
    return stats.get("pool_size", 0) >= stats.get("pool_max", 1) and not stats.get("pool_available")


def database_unavailable(request: HttpRequest, exc: BaseException) -> HttpResponse:
    """The 503 answer for a request that lost the database, logged as one line for admins."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:200]
    log.error(
        "database unavailable: %s %s answered 503 (%s: %s)",
        request.method, request.path, type(exc.__cause__ or exc).__name__, first_line,
    )  # fmt: skip
    busy = _pool_busy(exc)
    if request.path == "/healthz" or request.headers.get("Accept", "").startswith(
        "application/json"
    ):
        response: HttpResponse = JsonResponse(
            {"ok": False, "database": {"ok": False, "error": type(exc).__name__, "busy": busy}},
            status=503,
        )
    else:
        # Rendered without a request: no context processor may touch the lost database.
        page = loader.get_template("503.html").render({"busy": busy})
        response = HttpResponse(page, status=503)
    response["Retry-After"] = str(10 if busy else RETRY_AFTER_SECONDS)
    response["Cache-Control"] = "no-store"
    # Django would log the 503 again, with a traceback, as "Service Unavailable: /path".
    response._has_been_logged = True
    return response


def database_error_in(exc: BaseException | None) -> BaseException | None:
    """The database error that caused `exc` (itself, or one in its chain), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DATABASE_ERRORS):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


@receiver(got_request_exception)
def _remember_database_errors(sender: Any, request: HttpRequest | None = None, **kwargs) -> None:
    # A database error raised by another middleware (a new session's INSERT in
    # SessionMiddleware.process_response, a CSRF failure page whose context processors read the
    # session) never reaches process_exception: Django turns it into a 500 at that middleware.
    # It does send this signal, with the exception still being handled, so remember it for
    # process_response.
    exc = database_error_in(sys.exception())
    if request is not None and exc is not None:
        setattr(request, _MARK, exc)


def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    """handler400. SessionMiddleware reports a failed session UPDATE as SessionInterrupted (a
    400, "the session was deleted"): when a lost database caused it, say so instead."""
    db_error = database_error_in(exception)
    if db_error is not None:
        return database_unavailable(request, db_error)
    return defaults.bad_request(request, exception)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """Answers 503 with a plain page when the database cannot be reached.

    Sits above SessionMiddleware so that the session's own database reads and writes are
    covered. Nothing is half-written: a view that fails mid-way had its writes in a transaction
    (turn_submit is one), which the database rolls back.
    """

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DATABASE_ERRORS):
            return database_unavailable(request, exception)
        return None

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        exc = getattr(request, _MARK, None)
        if exc is not None and response.status_code == 500:
            return database_unavailable(request, exc)
        return response


def _is_utf8_form(body: bytes) -> bool:
    try:
        parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return False
    return True


class MalformedFormMiddleware(MiddlewareMixin):
    """Refuses a form post that is not UTF-8, with a 400 page, before anything reads it.

    Django would decode such a body as ISO-8859-1 (raw bytes) or put U+FFFD in place of bad
    percent-escapes, and the view would store the mojibake as if the user had typed it.
    Browsers always send UTF-8, so only a broken or hostile client meets this.
    """

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        if request.method != "POST" or request.content_type != "application/x-www-form-urlencoded":
            return None
        if _is_utf8_form(request.body):
            return None
        log.warning("refused a form post that is not UTF-8: %s", request.path)
        body = loader.get_template("400.html").render()
        return HttpResponse(body, status=400)


class SecretsExceptionReporterFilter(SafeExceptionReporterFilter):
    """Django's filter, plus: any POST field or local variable whose *name* looks secret.

    Django hides settings by name, but a view's POST data and a frame's local variables only
    when the view or function is decorated. The admin's App form posts `api_key`, and
    generators (FastGPTClient.stream_chat) cannot be covered by @sensitive_variables, so names
    are checked everywhere as a second line of defence.
    """

    secret_names = re.compile(
        r"api_?key|^key$|^headers$|secret|password|passwd|token|authorization", re.I
    )

    def get_post_parameters(self, request: HttpRequest | None) -> Any:
        params = super().get_post_parameters(request)
        if request is None or not self.is_active(request):
            return params
        if any(self.secret_names.search(name) for name in params):
            params = params.copy()
            for name in params:
                if self.secret_names.search(name):
                    params[name] = self.cleansed_substitute
        return params

    def get_traceback_frame_variables(self, request: HttpRequest | None, tb_frame: Any) -> Any:
        variables = super().get_traceback_frame_variables(request, tb_frame)
        if not self.is_active(request):
            return variables
        return [(name, self._cleanse_variable(name, value)) for name, value in variables]

    def _cleanse_variable(self, name: str, value: Any) -> Any:
        if self.secret_names.search(name):
            return self.cleansed_substitute
        if isinstance(value, BaseException):
            # An exception's repr shows its args: a UnicodeEncodeError raised while encoding the
            # Authorization header carries the whole "Bearer <key>" string. Its message (shown
            # at the top of the report anyway) does not.
            return f"{type(value).__name__}: {value}"
        return value
