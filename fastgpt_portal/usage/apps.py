from django.apps import AppConfig


class UsageConfig(AppConfig):
    name = "fastgpt_portal.usage"
    label = "usage"
    verbose_name = "Usage and quotas"
