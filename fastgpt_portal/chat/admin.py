from django.contrib import admin

from fastgpt_portal.chat.models import Conversation, Turn


class TurnInline(admin.TabularInline):
    model = Turn
    fields = ("question", "status", "points", "input_tokens", "output_tokens", "queued_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("title", "user", "app", "chat_id", "updated", "deleted_at")
    list_filter = ("app",)
    search_fields = ("title", "chat_id", "user__username")
    readonly_fields = ("chat_id", "created", "updated")
    list_select_related = ("user", "app")
    inlines = [TurnInline]


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ("pk", "user", "status", "points", "queued_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("question", "user__username", "conversation__chat_id")
    list_select_related = ("user",)
    readonly_fields = [f.name for f in Turn._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
