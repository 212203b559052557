from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models
from django.db.models import Q

# Shown in the admin and kept next to the code that applies it (selectors.limits_for_user).
PRECEDENCE_HELP = (
    "Which quota applies: the user's own quota if they have one (it replaces every other "
    "quota, blank limits included); otherwise their groups' quotas, where for each limit the "
    "most generous group wins (a blank limit, meaning unlimited, beats any number); otherwise "
    "the site-wide default; otherwise the user is unlimited. Days and months are counted in the "
    "portal's time zone. A blank limit means unlimited; 0 means the user cannot send at all."
)

_BLANK_IS_UNLIMITED = "Blank means unlimited; 0 stops sending."


class Quota(models.Model):
    """Limits on how much one user may ask. Attached to a user, a group, or to nobody (the
    site-wide default, at most one); how they combine is PRECEDENCE_HELP."""

    class Scope(models.TextChoices):
        USER = "user", "User"
        GROUP = "group", "Group"
        DEFAULT = "default", "Site-wide default"

    # Derived from user/group in save(); stored so the database can check the combination and
    # allow at most one default row.
    scope = models.CharField(max_length=8, choices=Scope.choices, editable=False)
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="quota",
        help_text="This person only. Leave user and group empty for the site-wide default.",
    )
    group = models.OneToOneField(
        Group,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="quota",
        help_text="Every member of this group (unless they have a quota of their own).",
    )
    turns_per_day = models.PositiveIntegerField(
        "messages per day",
        null=True,
        blank=True,
        help_text=f"Questions sent per calendar day. {_BLANK_IS_UNLIMITED}",
    )
    points_per_month = models.FloatField(
        "FastGPT points per month",
        null=True,
        blank=True,
        validators=[MinValueValidator(0)],
        help_text="FastGPT points that answers may cost per calendar month. Checked before each "
        "question, so the last answer of the month may go a little over. " + _BLANK_IS_UNLIMITED,
    )
    turns_per_minute = models.PositiveIntegerField(
        "messages per minute",
        null=True,
        blank=True,
        help_text=f"Questions sent in any 60 seconds, retries included. {_BLANK_IS_UNLIMITED}",
    )
    max_concurrent = models.PositiveIntegerField(
        "answers at a time",
        null=True,
        blank=True,
        help_text=f"Questions queued or being answered at once. {_BLANK_IS_UNLIMITED}",
    )
    note = models.CharField(max_length=200, blank=True, help_text="Why this quota exists.")
    updated = models.DateTimeField(auto_now=True)

    LIMIT_FIELDS = ("turns_per_day", "points_per_month", "turns_per_minute", "max_concurrent")

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    Q(scope="user", user__isnull=False, group__isnull=True)
                    | Q(scope="group", user__isnull=True, group__isnull=False)
                    | Q(scope="default", user__isnull=True, group__isnull=True)
                ),
                name="usage_quota_user_or_group_or_default",
            ),
            models.UniqueConstraint(
                fields=["scope"], condition=Q(scope="default"), name="usage_quota_one_default"
            ),
            models.CheckConstraint(
                condition=Q(points_per_month__isnull=True) | Q(points_per_month__gte=0),
                name="usage_quota_points_not_negative",
            ),
        ]

    def __str__(self) -> str:
        if self.user_id:
            return f"Quota of {self.user}"
        if self.group_id:
            return f"Quota of group {self.group}"
        return "Site-wide default quota"

    def save(self, *args, **kwargs) -> None:
        self._derive_scope()
        if kwargs.get("update_fields") is not None:
            kwargs["update_fields"] = {*kwargs["update_fields"], "scope"}
        super().save(*args, **kwargs)

    def clean(self) -> None:
        if self.user_id and self.group_id:
            raise ValidationError("A quota belongs to a user or to a group, not both.")
        self._derive_scope()
        if (
            self.scope == self.Scope.DEFAULT
            and Quota.objects.filter(scope=self.Scope.DEFAULT).exclude(pk=self.pk).exists()
        ):
            raise ValidationError(
                "There is already a site-wide default quota; edit that one, or pick a user "
                "or a group for this one."
            )

    def _derive_scope(self) -> None:
        if self.user_id and self.group_id:
            # Left as is so the CheckConstraint refuses it, rather than silently picking one.
            self.scope = ""
        elif self.user_id:
            self.scope = self.Scope.USER
        elif self.group_id:
            self.scope = self.Scope.GROUP
        else:
            self.scope = self.Scope.DEFAULT
