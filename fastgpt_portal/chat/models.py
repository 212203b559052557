from __future__ import annotations

import secrets

from django.conf import settings
from django.db import models
from django.urls import reverse

from fastgpt_portal.upstream.models import App


def new_chat_id() -> str:
    # Our own chatId, always sent (fastgpt-api.md §0.4): FastGPT may not return one it makes.
    return f"portal-{secrets.token_hex(12)}"


def new_data_id() -> str:
    return secrets.token_hex(12)


class Conversation(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    app = models.ForeignKey(App, on_delete=models.PROTECT, related_name="conversations")
    chat_id = models.CharField(max_length=64, unique=True, default=new_chat_id, editable=False)
    title = models.CharField(max_length=200, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    updated = models.DateTimeField(auto_now=True, db_index=True)
    # Deleting hides a conversation from its owner; the record stays for the admins' audit.
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-updated"]
        indexes = [models.Index(fields=["user", "-updated"])]

    def __str__(self) -> str:
        return self.title or f"Conversation {self.pk}"

    def get_absolute_url(self) -> str:
        return reverse("chat:conversation", args=[self.pk])


class Turn(models.Model):
    """One question and its answer. Only chat.services changes `status`."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"
        CANCELLED = "cancelled"

    FINISHED = (Status.DONE, Status.FAILED, Status.CANCELLED)

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    # Denormalised owner so every read can be scoped to the user with one indexed filter.
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    question = models.TextField()
    answer = models.TextField(blank=True)
    reasoning = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True
    )
    error = models.CharField(max_length=500, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    data_id = models.CharField(max_length=32, default=new_data_id, editable=False)
    # Worker claims of the current try; bounds the automatic retries of transient failures.
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When the question was handed to FastGPT."
    )
    points = models.FloatField(default=0)
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    flow_responses = models.JSONField(null=True, blank=True)
    # A workflow that stops to ask the user (userSelect / userInput, fastgpt-api.md §3.4-3.5):
    # its params; the reply is sent as the next message of the same conversation.
    interactive = models.JSONField(null=True, blank=True)
    # How many times the user pressed Retry on this turn.
    retries = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["pk"]
        indexes = [
            models.Index(fields=["status", "queued_at"]),
            # Quotas count a user's turns by day, month and minute.
            models.Index(fields=["user", "queued_at"], name="chat_turn_user_queued_idx"),
        ]

    def __str__(self) -> str:
        return f"Turn {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED

    @property
    def is_live(self) -> bool:
        return self.status in (self.Status.QUEUED, self.Status.RUNNING)

    @property
    def select_options(self) -> list[str]:
        if not self.interactive or self.interactive.get("type") != "userSelect":
            return []
        options = (self.interactive.get("params") or {}).get("userSelectOptions") or []
        return [str(o.get("value")) for o in options if isinstance(o, dict) and o.get("value")]

    @property
    def input_form(self) -> list[dict]:
        if not self.interactive or self.interactive.get("type") != "userInput":
            return []
        form = (self.interactive.get("params") or {}).get("inputForm") or []
        return [f for f in form if isinstance(f, dict) and f.get("key")]

    @property
    def interactive_description(self) -> str:
        return str((self.interactive or {}).get("params", {}).get("description") or "")

    @property
    def can_retry(self) -> bool:
        return self.status in (self.Status.FAILED, self.Status.CANCELLED)
