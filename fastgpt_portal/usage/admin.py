from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, FloatField, IntegerField, OuterRef, QuerySet, Subquery, Sum
from django.db.models.functions import Coalesce
from django.http import HttpRequest
from django.utils import timezone

from fastgpt_portal.chat.models import Turn
from fastgpt_portal.usage.models import PRECEDENCE_HELP, Quota
from fastgpt_portal.usage.selectors import Periods, format_points


def _user_turns(since) -> QuerySet[Turn]:
    return Turn.objects.filter(user=OuterRef("user"), queued_at__gte=since).values("user")


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    list_display = (
        "applies_to",
        "turns_per_day",
        "points_per_month",
        "turns_per_minute",
        "max_concurrent",
        "usage_now",
        "note",
    )
    list_display_links = ("applies_to",)
    list_filter = ("scope",)
    search_fields = ("user__username", "user__email", "group__name", "note")
    autocomplete_fields = ("user", "group")
    list_select_related = ("user", "group")
    fieldsets = (
        (
            "Applies to",
            {
                "fields": ("user", "group"),
                "description": "Pick a user or a group. Leave both empty for the site-wide "
                "default, which applies to everyone with no quota of their own or of a group "
                "(there can be one).",
            },
        ),
        ("Limits", {"fields": Quota.LIMIT_FIELDS, "description": PRECEDENCE_HELP}),
        (None, {"fields": ("note",)}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Quota]:
        # Today's usage of user quotas as two correlated subqueries: one query for the page.
        periods = Periods.around(timezone.now())
        turns = _user_turns(periods.day_start).annotate(n=Count("pk")).values("n")
        points = _user_turns(periods.month_start).annotate(p=Sum("points")).values("p")
        return (
            super()
            .get_queryset(request)
            .annotate(
                turns_today=Coalesce(Subquery(turns, output_field=IntegerField()), 0),
                points_month=Coalesce(Subquery(points, output_field=FloatField()), 0.0),
            )
        )

    @admin.display(description="Applies to", ordering="scope")
    def applies_to(self, obj: Quota) -> str:
        if obj.user_id:
            return f"User {obj.user}"
        if obj.group_id:
            return f"Group {obj.group}"
        return "Everyone else (site-wide default)"

    @admin.display(description="Used (user quotas)")
    def usage_now(self, obj: Quota) -> str:
        if not obj.user_id:
            return "—"
        return f"{obj.turns_today:,} today · {format_points(obj.points_month)} points this month"
