from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from fastgpt_portal.upstream.client import client_for
from fastgpt_portal.upstream.models import App
from fastgpt_portal.upstream.services import app_record_check


class AppForm(forms.ModelForm):
    # Write-only: the stored key is never sent back to the browser, only its masked form.
    api_key = forms.CharField(
        label="App key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Leave empty to keep the current key.",
    )

    class Meta:
        model = App
        fields = ["name", "slug", "base_url", "api_key", "fastgpt_app_id", "enabled", "is_demo"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.initial.pop("api_key", None)
        if not self.instance.pk:
            self.fields["api_key"].required = True
            self.fields[
                "api_key"
            ].help_text = "fastgpt-… (an app key, or a global key with the app ID)"

    def clean_api_key(self) -> str:
        value = self.cleaned_data.get("api_key", "")
        if not value and self.instance.pk:
            return App.objects.get(pk=self.instance.pk).api_key
        return value


@admin.register(App)
class AppAdmin(admin.ModelAdmin):
    form = AppForm
    list_display = ("name", "slug", "base_url", "masked_key", "enabled", "healthy", "is_demo")
    list_filter = ("enabled", "healthy", "is_demo")
    readonly_fields = ("masked_key", "healthy", "health_message", "health_checked", "created")
    actions = ["check_apps"]
    prepopulated_fields = {"slug": ("name",)}

    @admin.display(description="Key")
    def masked_key(self, obj: App) -> str:
        return obj.masked_key

    @admin.action(description="Check the key with FastGPT")
    def check_apps(self, request: HttpRequest, queryset: QuerySet[App]) -> None:
        for app in queryset:
            result = client_for(app).check()
            app_record_check(app=app, ok=result.ok, message=result.message)
            level = messages.SUCCESS if result.ok else messages.ERROR
            self.message_user(request, f"{app.name}: {result.message}", level)
