"""Login pages: Django's own views, with the throttled forms and an HTTP 429 when refused."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.views import LoginView
from django.http import HttpRequest, HttpResponse

from fastgpt_portal.accounts.forms import LoginForm


def _too_many(response: HttpResponse) -> HttpResponse:
    """429 + Retry-After when the form refused the attempt because of the throttle."""
    form = (getattr(response, "context_data", None) or {}).get("form")
    if form is not None and getattr(form, "throttled", ""):
        response.status_code = 429
        response["Retry-After"] = str(form.throttled_seconds)
    return response


class ThrottledLoginView(LoginView):
    authentication_form = LoginForm

    def form_invalid(self, form: LoginForm) -> HttpResponse:
        return _too_many(super().form_invalid(form))


login = ThrottledLoginView.as_view()


def admin_login(request: HttpRequest) -> HttpResponse:
    # The admin's own view (its template, redirects and context), with admin.site.login_form
    # set to the throttled AdminLoginForm in fastgpt_portal.urls.
    return _too_many(admin.site.login(request))
