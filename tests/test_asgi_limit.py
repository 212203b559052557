"""lib.asgi_limit.ConcurrencyLimit: a bounded number of requests inside Django at once, the
rest waiting in order; a streaming response leaves once it has started."""

from __future__ import annotations

import asyncio

from fastgpt_portal.lib.asgi_limit import ConcurrencyLimit


class App:
    """Records how many requests are inside at once; each ends when the test says so."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.entered: list[str] = []
        self.finish: dict[str, asyncio.Event] = {}

    async def __call__(self, scope, receive, send) -> None:
        name = scope["path"]
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.entered.append(name)
        try:
            if name.startswith("/stream"):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                self.inside -= 1  # what follows is the stream, outside the view
                await self.finish.setdefault(name, asyncio.Event()).wait()
                await send({"type": "http.response.body", "body": b"end"})
                return
            await self.finish.setdefault(name, asyncio.Event()).wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": name.encode()})
        finally:
            if not name.startswith("/stream"):
                self.inside -= 1


def request(app, path: str) -> asyncio.Task:
    async def receive():
        await asyncio.sleep(3600)

    async def send(message):
        pass

    scope = {"type": "http", "method": "GET", "path": path, "headers": []}
    return asyncio.ensure_future(app(scope, receive, send))


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_only_the_limit_is_inside_at_once_and_the_rest_go_in_order():
    async def scenario():
        inner = App()
        app = ConcurrencyLimit(inner, limit=2)
        tasks = [request(app, f"/r{i}") for i in range(5)]
        await settle()
        assert inner.entered == ["/r0", "/r1"]
        for i in range(5):
            inner.finish.setdefault(f"/r{i}", asyncio.Event()).set()
            await settle()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert inner.entered == [f"/r{i}" for i in range(5)]
        assert inner.most == 2

    asyncio.run(scenario())


def test_a_streaming_response_gives_its_place_up_once_it_has_started():
    async def scenario():
        inner = App()
        app = ConcurrencyLimit(inner, limit=1)
        stream = request(app, "/stream")
        await settle()
        page = request(app, "/page")
        await settle()
        assert inner.entered == ["/stream", "/page"], "the page did not wait for the stream"
        inner.finish.setdefault("/page", asyncio.Event()).set()
        await asyncio.wait_for(page, 5)
        inner.finish["/stream"].set()
        await asyncio.wait_for(stream, 5)

    asyncio.run(scenario())


def test_no_limit_and_other_scopes_pass_straight_through():
    async def scenario():
        inner = App()
        tasks = [request(ConcurrencyLimit(inner, limit=0), f"/r{i}") for i in range(3)]
        await settle()
        assert inner.most == 3
        for event in inner.finish.values():
            event.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)

        seen = []

        async def lifespan(scope, receive, send):
            seen.append(scope["type"])

        await ConcurrencyLimit(lifespan, limit=1)({"type": "lifespan"}, None, None)
        assert seen == ["lifespan"]

    asyncio.run(scenario())
