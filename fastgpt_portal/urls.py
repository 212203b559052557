from django.contrib import admin
from django.urls import include, path

from fastgpt_portal import ops
from fastgpt_portal.accounts import views as accounts_views
from fastgpt_portal.accounts.forms import AdminLoginForm

admin.site.site_header = "FastGPT Portal administration"
admin.site.site_title = "FastGPT Portal"
# The admin's login counts failures with the portal's (accounts.forms): no way around the throttle.
admin.site.login_form = AdminLoginForm

# A lost database behind a failed session save surfaces as a 400; lib.middleware makes it a 503.
handler400 = "fastgpt_portal.lib.middleware.bad_request"

urlpatterns = [
    # The throttled login first; Django's auth URLs serve the rest (logout, password change).
    path("accounts/", include("fastgpt_portal.accounts.urls")),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/login/", accounts_views.admin_login),
    path("admin/", admin.site.urls),
    path("healthz", ops.healthz, name="healthz"),
    path("metrics", ops.metrics, name="metrics"),
    path("", include("fastgpt_portal.chat.urls")),
]
