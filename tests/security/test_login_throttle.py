"""Login throttling: after 5 failures for a username from one address within 15 minutes, further
attempts are refused (HTTP 429) without the password being checked; a success resets the count.
The count lives in Redis (Django's cache), so every web process shares it."""

from __future__ import annotations

import re
import secrets
import time

import httpx
import pytest
from django.contrib.auth.signals import user_login_failed
from django.test import Client

from fastgpt_portal.accounts.forms import throttle_reset

pytestmark = pytest.mark.django_db

PASSWORD = "alice-pass-123"
REFUSED = re.compile(r"Too many failed attempts; try again in (\d+) minutes?\.")


@pytest.fixture(autouse=True)
def fast_hashing(settings):
    # Users made by the fixtures get a cheap hash: a hundred logins at PBKDF2's cost take a minute.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def address():
    """A client address of this test's own, so no count leaks between tests (Redis persists)."""
    ip = f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
    yield ip
    for username in ("alice", "Alice", "bob", "admin"):
        throttle_reset(username, ip)


def log_in(client: Client, username: str, password: str, url: str = "/accounts/login/"):
    return client.post(url, {"username": username, "password": password})


def fail(client: Client, times: int, username: str = "alice") -> None:
    for _ in range(times):
        response = log_in(client, username, "wrong-password")
        assert response.status_code in (200, 429)


def test_the_login_page_keeps_its_contract(client):
    page = client.get("/accounts/login/").text
    assert 'name="username"' in page and 'name="password"' in page
    assert '<label for="id_username">Username</label>' in page
    assert '<label for="id_password">Password</label>' in page
    assert '<button type="submit">Log in</button>' in page


def test_four_failures_still_allow_a_login(alice, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 4)
    response = log_in(client, "alice", PASSWORD)
    assert response.status_code == 302
    assert client.session.get("_auth_user_id") == str(alice.pk)


def test_the_fifth_failure_locks_the_username_from_that_address(alice, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 4)
    response = log_in(client, "alice", "wrong-password")
    assert response.status_code == 429
    assert REFUSED.search(response.text).group(1) == "15"
    assert response["Retry-After"] == "900"


def test_a_locked_login_is_refused_without_checking_the_password(alice, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 5)
    checked = []
    user_login_failed.connect(receiver := lambda **kw: checked.append(kw))
    try:
        wrong = log_in(client, "alice", "wrong-password")
        right = log_in(client, "alice", PASSWORD)
    finally:
        user_login_failed.disconnect(receiver)

    assert wrong.status_code == right.status_code == 429
    assert REFUSED.search(right.text), right.text
    assert "_auth_user_id" not in client.session, "even the right password does not log in"
    assert checked == [], "authenticate() was not even called"
    # The page keeps its form, so the user can try again later without reloading.
    assert 'name="username"' in right.text and 'value="alice"' in right.text


def test_a_success_resets_the_count(alice, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 4)
    assert log_in(client, "alice", PASSWORD).status_code == 302
    client.logout()
    fail(client, 4)
    assert log_in(client, "alice", "wrong-password").status_code == 429, "a fresh count of 5"


def test_the_lock_is_per_username_and_address(alice, bob, address):
    fail(Client(REMOTE_ADDR=address), 5)
    assert log_in(Client(REMOTE_ADDR=address), "bob", "bob-pass-123").status_code == 302
    assert log_in(Client(REMOTE_ADDR="192.0.2.77"), "alice", PASSWORD).status_code == 302
    throttle_reset("alice", "192.0.2.77")


def test_the_username_is_matched_without_regard_to_case(alice, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 5, username="Alice")
    assert log_in(client, "alice", PASSWORD).status_code == 429


def test_a_forged_forwarded_for_header_does_not_escape_the_lock(alice, address):
    fail(Client(REMOTE_ADDR=address), 5)
    forged = Client(REMOTE_ADDR=address, HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert log_in(forged, "alice", PASSWORD).status_code == 429


def test_behind_a_proxy_the_forwarded_address_is_the_clients(alice, address, settings):
    settings.PORTAL_PROXY_COUNT = 1
    proxy = "10.255.255.1"
    fail(Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=f"198.51.100.1, {address}"), 5)
    elsewhere = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="198.51.100.2")
    assert log_in(elsewhere, "alice", PASSWORD).status_code == 302, "another client, not locked"
    same = Client(REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=f"forged, {address}")
    assert log_in(same, "alice", PASSWORD).status_code == 429
    throttle_reset("alice", "198.51.100.2")


def test_the_lock_ends_after_the_window(alice, address, settings):
    settings.PORTAL_LOGIN_WINDOW_SECONDS = 2
    client = Client(REMOTE_ADDR=address)
    fail(client, 5)
    response = log_in(client, "alice", PASSWORD)
    assert response.status_code == 429
    assert REFUSED.search(response.text).group(1) == "1", "never 'try again in 0 minutes'"
    assert "1 minute." in response.text
    time.sleep(2.1)
    assert log_in(client, "alice", PASSWORD).status_code == 302


def test_the_admin_login_shares_the_count(admin_user, address):
    client = Client(REMOTE_ADDR=address)
    fail(client, 5, username="admin")
    response = log_in(client, "admin", "password", url="/admin/login/?next=/admin/")
    assert response.status_code == 429
    assert REFUSED.search(response.text)
    assert "_auth_user_id" not in client.session


@pytest.mark.django_db(transaction=True)
def test_failures_count_across_web_processes(alice, portal_server):
    """Four failures here, one at the ASGI server process: both see the same count."""
    address = "127.0.0.1"  # the server sees the test's connection from loopback
    throttle_reset("alice", address)
    try:
        fail(Client(REMOTE_ADDR=address), 4)
        with httpx.Client(base_url=portal_server.url, timeout=10) as browser:
            login_page = browser.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login_page.text)
            form = {"csrfmiddlewaretoken": token.group(1), "username": "alice"}
            response = browser.post("/accounts/login/", data={**form, "password": "wrong"})
            assert response.status_code == 429, "the fifth failure, counted in another process"
        assert log_in(Client(REMOTE_ADDR=address), "alice", PASSWORD).status_code == 429
    finally:
        throttle_reset("alice", address)
