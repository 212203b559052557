"""Routes in front of django.contrib.auth.urls: only the login view is the portal's own."""

from django.urls import path

from fastgpt_portal.accounts import views

urlpatterns = [
    # Same URL and name as Django's, so {% url 'login' %} and LOGIN_URL stay as they are.
    path("login/", views.login, name="login"),
]
