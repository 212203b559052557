import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fastgpt_portal.settings")

django_application = get_asgi_application()

# After Django is set up: it imports models.
from fastgpt_portal.chat.asgi_stream import EventStreamApp  # noqa: E402

# Answer streams of a user's own turns skip Django's request cycle (see asgi_stream).
application = EventStreamApp(django_application)
