from django.apps import AppConfig


class ChatConfig(AppConfig):
    name = "fastgpt_portal.chat"
    label = "chat"

    def ready(self) -> None:
        from fastgpt_portal.chat import signals  # noqa: F401
