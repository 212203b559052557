"""The relay's writer (chat.relay._Writer) against the real Redis: what it holds back under
load and what it never holds back."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from fastgpt_portal.chat import relay


@pytest.fixture
def keys():
    made = [f"portal:test:{uuid.uuid4().hex}:{i}" for i in range(3)]
    yield made
    relay.sync_redis().delete(*made)


def write(writer: relay._Writer, key: str, text: str, urgent: bool = False) -> float:
    """Seconds until the entry is in Redis."""
    start = time.monotonic()
    writer.flush(writer.submit(key, [("delta", text)], urgent), key)
    return time.monotonic() - start


def test_the_window_grows_with_the_streams_up_to_its_cap(settings):
    settings.PORTAL_COALESCE_MS, settings.PORTAL_COALESCE_MAX_MS = 15, 50
    assert relay.coalesce_window(1) == relay.coalesce_window(50) == 0.015
    assert relay.coalesce_window(100) == pytest.approx(0.030)
    assert relay.coalesce_window(1000) == 0.050


def test_under_load_writes_wait_for_the_window_but_a_first_token_does_not(settings, keys):
    settings.PORTAL_COALESCE_MS = settings.PORTAL_COALESCE_MAX_MS = 1500
    writer = relay._Writer()
    assert write(writer, keys[0], "alone") < 0.75, "a lone stream is never held"
    write(writer, keys[1], "second stream")  # now two streams at once: the window applies

    assert write(writer, keys[2], "first token", urgent=True) < 0.75
    assert write(writer, keys[0], "a later token") >= 1.0
    entries = relay.sync_redis().xrange(keys[0])
    assert [fields["d"] for _, fields in entries] == ["alone", "a later token"]


def test_the_ttl_is_set_with_the_first_write_not_with_every_one(settings, keys):
    settings.PORTAL_STREAM_TTL_SECONDS = 100
    writer = relay._Writer()
    write(writer, keys[0], "one")
    assert 99 <= relay.sync_redis().ttl(keys[0]) <= 100
    relay.sync_redis().expire(keys[0], 50)  # stands in for time passing
    write(writer, keys[0], "two")
    assert relay.sync_redis().ttl(keys[0]) <= 50, "not refreshed within a tenth of the TTL"
    writer._ttl_set[keys[0]] -= 11  # a tenth of the TTL later
    write(writer, keys[0], "three")
    assert relay.sync_redis().ttl(keys[0]) >= 99


def test_a_command_redis_refuses_fails_the_write_but_the_other_streams_are_written(keys):
    redis_ = relay.sync_redis()
    redis_.set(keys[1], "not a stream")
    writer = relay._Writer()
    batch = [(keys[0], [("delta", "kept")]), (keys[1], [("delta", "refused")])]

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer._write(batch)

    assert [f["d"] for _, f in redis_.xrange(keys[0])] == ["kept"]
    writer._write([(keys[0], [("delta", " and after")])])  # every reply was read
    assert [f["d"] for _, f in redis_.xrange(keys[0])] == ["kept", " and after"]


def test_a_write_whose_connection_redis_closes_fails_and_the_next_goes_out(keys, monkeypatch):
    pool = relay.sync_redis().connection_pool
    get_connection = pool.get_connection
    killer = redis.Redis.from_url(relay.settings.REDIS_URL)

    def closed_once_handed_out(*args, **kwargs):
        conn = get_connection(*args, **kwargs)
        conn.send_command("CLIENT", "ID")
        killer.client_kill_filter(_id=conn.read_response())  # after the pool's own checks
        return conn

    writer = relay._Writer()
    with monkeypatch.context() as patched:
        patched.setattr(pool, "get_connection", closed_once_handed_out)
        with pytest.raises(redis.ConnectionError):
            writer._write([(keys[0], [("delta", "lost")])])
    writer._write([(keys[0], [("delta", "written")])])

    assert [f["d"] for _, f in relay.sync_redis().xrange(keys[0])] == ["written"]
    killer.close()


def test_a_first_token_is_in_redis_when_publish_returns_after_what_queued_before_it(settings, keys):
    settings.PORTAL_COALESCE_MS = settings.PORTAL_COALESCE_MAX_MS = 1500
    writer = relay._Writer()
    write(writer, keys[0], "alone")
    write(writer, keys[1], "second stream")  # two streams: the writer now holds to its window
    writer.submit(keys[2], [("status", "AI chat")])
    writer.submit(keys[0], [("delta", "held")])

    writer.submit(keys[2], [("delta", "first token")], urgent=True)

    entries = relay.sync_redis().xrange(keys[2])
    assert [(f["e"], f["d"]) for _, f in entries] == [
        ("status", "AI chat"),
        ("delta", "first token"),
    ]
    # What other turns had queued went out with it, in order.
    assert [f["d"] for _, f in relay.sync_redis().xrange(keys[0])] == ["alone", "held"]


def test_a_first_token_waits_for_a_write_under_way_and_keeps_the_order(settings, keys):
    writer = relay._Writer()
    started, release = threading.Event(), threading.Event()
    real_write = writer._write

    def slow_write(batch):
        started.set()
        release.wait(5)
        real_write(batch)

    writer._write = slow_write
    writer.submit(keys[0], [("delta", "one")])
    assert started.wait(5)
    ticket = writer.submit(keys[0], [("delta", " two")], urgent=True)  # must not overtake "one"
    assert relay.sync_redis().xrange(keys[0]) == []
    release.set()
    writer.flush(ticket, keys[0])
    assert [f["d"] for _, f in relay.sync_redis().xrange(keys[0])] == ["one", " two"]


async def stop(hub: relay.StreamHub) -> None:
    if hub._task is not None:
        hub._task.cancel()
    if hub._reader is not None:
        await hub._reader.aclose()


def test_a_stream_followed_again_from_an_earlier_point_skips_nothing(keys):
    # A browser reads part of an answer, drops, and reconnects with its Last-Event-ID while
    # the hub's blocking read, sent for the first connection from further on, is still out.
    import asyncio

    key = keys[0]
    first = [relay.sync_redis().xadd(key, {"e": "delta", "d": w}) for w in ("a", "b", "c")]

    async def scenario() -> list[str]:
        hub = relay.StreamHub()
        try:
            old = await hub.subscribe(key, "0-0")
            assert [i for i, _ in await old.get(5)] == first
            await asyncio.sleep(0.05)  # the hub's next read is out, from "c" on
            old.close()
            # Blocking the loop: the read returns "d" before the hub task can look at it.
            relay.sync_redis().xadd(key, {"e": "delta", "d": "d"})
            new = await hub.subscribe(key, first[0])  # the browser had only "a"
            got: list[str] = []
            while len(got) < 3:
                entries = await new.get(5)
                assert entries, f"only {got} arrived"
                got += [fields["d"] for _, fields in entries]
            return got
        finally:
            await stop(hub)

    assert asyncio.run(scenario()) == ["b", "c", "d"]


def test_the_hub_packs_its_reads_in_c_and_redis_understands_them(keys):
    import asyncio

    written = {key: relay.sync_redis().xadd(key, {"e": "delta", "d": key[-1]}) for key in keys}

    async def scenario() -> list[str]:
        hub = relay.StreamHub()
        try:
            subs = [await hub.subscribe(key, "0-0") for key in keys]
            got = [fields["d"] for sub in subs for _, fields in await sub.get(5)]
            assert isinstance(hub._reader.connection, relay._CPacking)
            # The shared client too (the hub's XRANGE, cancels), on the same connection kind.
            client = relay.async_redis()
            assert issubclass(client.connection_pool.connection_class, relay._CPacking)
            assert await client.xrange(keys[0]) == [(written[keys[0]], {"e": "delta", "d": "0"})]
            return got
        finally:
            await stop(hub)

    assert asyncio.run(scenario()) == ["0", "1", "2"]


def test_a_subscription_waits_until_entries_come_or_its_time_is_up():
    import asyncio

    async def scenario() -> None:
        sub = relay.Subscription(relay.StreamHub(), "portal:test:unread", "0-0")
        started = time.monotonic()
        assert await sub.get(0.05) == [], "quiet: nothing, once the wait is over"
        assert time.monotonic() - started >= 0.05

        loop = asyncio.get_running_loop()
        loop.call_later(0.05, sub._push, [("1-1", {"e": "delta", "d": "x"})])
        started = time.monotonic()
        assert await sub.get(10) == [("1-1", {"e": "delta", "d": "x"})]
        assert time.monotonic() - started < 5, "woken by the entry, not by the timer"

        # A browser gone while waiting: the wait ends and leaves nothing to wake behind.
        waiting = asyncio.ensure_future(sub.get(10))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert sub._waiter is None
        sub._push([("1-2", {"e": "delta", "d": "y"})])
        assert [ident for ident, _ in await sub.get(10)] == ["1-2"]
        # Entries older than what was delivered are not delivered again.
        sub._push([("1-1", {"e": "delta", "d": "x"})])
        assert await sub.get(0.01) == []

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "command",
    [
        ("XREAD", "BLOCK", 10_000, "STREAMS", "a", "b", "0-0", "1-2"),
        ("XADD", "k", "*", "e", "delta", "d", "né \u2028"),
        ("CLIENT ID",),  # one string, split by redis-py
        ("CLIENT", "UNBLOCK", 7),
        ("SET", "k", memoryview(b"v"), "EX", 1.5),
        ("JSON.GET", b"k"),
    ],
)
def test_the_c_packing_writes_what_redis_py_writes(command):
    from redis.connection import Connection, PythonRespSerializer

    class Packed(relay._CPacking, Connection):
        pass

    expected = b"".join(PythonRespSerializer(6000, Connection().encoder.encode).pack(*command))
    assert b"".join(Packed().pack_command(*command)) == expected
