import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fastgpt_portal.settings")

django_application = get_asgi_application()

# After Django is set up: it imports models.
from django.conf import settings  # noqa: E402

from fastgpt_portal.chat.asgi_stream import EventStreamApp  # noqa: E402
from fastgpt_portal.lib.asgi_limit import ConcurrencyLimit  # noqa: E402
from fastgpt_portal.lib.gc_tuning import tune_for_serving  # noqa: E402
from fastgpt_portal.lib.threaded_django import ThreadedDjango  # noqa: E402

# Answer streams of a user's own turns skip Django's request cycle (see asgi_stream); other
# requests enter Django a few at a time (see asgi_limit), each handled by one call to a pooled
# thread (see threaded_django).
_threads = settings.PORTAL_WEB_CONCURRENCY or 32
application = EventStreamApp(
    ConcurrencyLimit(
        ThreadedDjango(_threads, async_app=django_application), settings.PORTAL_WEB_CONCURRENCY
    )
)

tune_for_serving()
