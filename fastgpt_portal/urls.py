from django.contrib import admin
from django.urls import include, path

from fastgpt_portal import ops

admin.site.site_header = "FastGPT Portal administration"
admin.site.site_title = "FastGPT Portal"

urlpatterns = [
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
    path("healthz", ops.healthz, name="healthz"),
    path("metrics", ops.metrics, name="metrics"),
    path("", include("fastgpt_portal.chat.urls")),
]
