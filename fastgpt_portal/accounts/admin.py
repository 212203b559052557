from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from fastgpt_portal.accounts.models import Identity, User


class IdentityInline(admin.StackedInline):
    model = Identity
    can_delete = False
    readonly_fields = ("strategy", "created")
    extra = 0
    help_text = "The customUid FastGPT stores as the user of this person's chats."


@admin.register(User)
class PortalUserAdmin(UserAdmin):
    inlines = [IdentityInline]
    list_display = ("username", "email", "custom_uid", "is_staff", "is_active")
    list_select_related = ("identity",)

    @admin.display(description="customUid")
    def custom_uid(self, obj: User) -> str:
        identity = getattr(obj, "identity", None)
        return identity.custom_uid if identity else "—"


@admin.register(Identity)
class IdentityAdmin(admin.ModelAdmin):
    list_display = ("custom_uid", "user", "strategy", "created")
    search_fields = ("custom_uid", "user__username", "user__email")
    readonly_fields = ("strategy", "created")
    list_select_related = ("user",)
