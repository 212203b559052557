from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "fastgpt_portal.accounts"
    label = "accounts"
