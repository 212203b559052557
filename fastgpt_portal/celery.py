import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fastgpt_portal.settings")

app = Celery("fastgpt_portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["fastgpt_portal.chat"])
