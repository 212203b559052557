"""Fixtures for the upstream tests: a FastGPT double with an app key, a global key and a key of
another team, and a client that talks to it over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fastgpt_portal.upstream.client import FastGPTClient, keep_assigned_pools, new_http
from fastgpt_portal.upstream.double import DOUBLE_APP_ID, DOUBLE_APP_KEY, FastGPTDouble

APP_KEY = DOUBLE_APP_KEY
GLOBAL_KEY = "fastgpt-globalkey0demo"
OTHER_TEAM_KEY = "fastgpt-otherteam0demo"
OTHER_APP_ID = "65f0d0b1e000000000000a02"
KEYS = {
    APP_KEY: {"app_id": DOUBLE_APP_ID, "name": "portal key", "kind": "app"},
    GLOBAL_KEY: {"name": "team key", "kind": "global"},
    OTHER_TEAM_KEY: {
        "app_id": OTHER_APP_ID,
        "name": "other team",
        "team_id": "65f0d0b1e000000000000e02",
        "tmb_id": "65f0d0b1e000000000000b02",
    },
}


@pytest.fixture(scope="session")
def upstream_double() -> Iterator[FastGPTDouble]:
    with FastGPTDouble(keys=KEYS, heartbeat_seconds=10.0) as double:
        yield double


@pytest.fixture
def fg(upstream_double: FastGPTDouble) -> Iterator[FastGPTDouble]:
    """The shared double, emptied before and after each test."""
    upstream_double.reset()
    yield upstream_double
    upstream_double.reset()


def make_http(transport: str) -> httpx.Client:
    """The portal's client ("loop"), or httpx's own transport ("httpx"), which the portal still
    uses through an HTTP(S)_PROXY: both must fail and recover alike."""
    if transport == "loop":
        return new_http()
    return keep_assigned_pools(httpx.Client(timeout=10))


@pytest.fixture(scope="session", params=["loop", "httpx"])
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    # One pool for the whole run: building a client (its TLS context) costs ~25 ms.
    with make_http(request.param) as client:
        yield client


@pytest.fixture
def api(fg: FastGPTDouble, http: httpx.Client) -> FastGPTClient:
    """Our client, with an app key, on the double."""
    return FastGPTClient(fg.url, APP_KEY, timeout=5, connect_timeout=2, http=http)
