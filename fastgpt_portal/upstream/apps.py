from django.apps import AppConfig


class UpstreamConfig(AppConfig):
    name = "fastgpt_portal.upstream"
    label = "upstream"
