"""WhiteNoise's middleware, able to run in an async middleware chain.

WhiteNoiseMiddleware (6.x) is sync-only. Under ASGI, one sync-only middleware near the top makes
Django run every request through extra thread hops: the loop hands the request to a thread for
WhiteNoise, which hands the rest of the chain back to the loop, whose sync views go back to that
thread. Each hop waits for the GIL (up to the 5 ms switch interval while another thread runs),
which cost the portal about 5 ms per request and more under load, including on the event stream
that carries the answers. Static files are rare next to those requests, so only they leave the
event loop here.
"""

from __future__ import annotations

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase
from whitenoise.middleware import WhiteNoiseMiddleware


class AsyncWhiteNoiseMiddleware(WhiteNoiseMiddleware):
    sync_capable = True
    async_capable = True

    def __init__(self, get_response=None, settings=None) -> None:  # noqa: ANN001 - WhiteNoise's
        if settings is None:
            super().__init__(get_response)
        else:
            super().__init__(get_response, settings)
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest):  # noqa: ANN204 - a response or a coroutine
        if self._is_async:
            return self.__acall__(request)
        return super().__call__(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        if self.autorefresh:
            static_file = await sync_to_async(self.find_file)(request.path_info)
        else:
            static_file = self.files.get(request.path_info)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
