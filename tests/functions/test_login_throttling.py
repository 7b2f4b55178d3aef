"""Password guessing at `POST /auth/login` is throttled per account and client IP, per IP and
per account, with growing waits answered as 429 + Retry-After and no password check; the
owner is never locked out. Against both throttle stores (the database and Redis)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import bcrypt
import pytest

from shared_layer.services import accounts
from tests.conftest import table_counts
from tests.support.problems import assert_problem

PASSWORD = "Corr3ct-horse-battery"
EMAIL = "ann@example.com"


@pytest.fixture
def auth_client(client: Any, throttle_store: str) -> Any:
    return client("auth")


@pytest.fixture
def bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every bcrypt password check made (bcrypt's own function, counted on the way through)."""
    checks: list[bytes] = []
    real = bcrypt.checkpw

    def counted(password: bytes, hashed: bytes) -> bool:
        checks.append(password)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counted)
    return checks


def login(c: Any, password: str, *, email: str = EMAIL, ip: str | None = None) -> Any:
    headers = {"X-Forwarded-For": ip} if ip else {}
    return c.post("/login", json={"email": email, "password": password}, headers=headers)


@pytest.fixture
def registered(db: Any, auth_client: Any) -> None:
    response = auth_client.post("/register", json={"email": EMAIL, "password": PASSWORD})
    assert response.status_code == 201, response.get_data(as_text=True)


@pytest.fixture
def limits(settings_env: Callable[..., None]) -> Callable[..., None]:
    """Set the sign-in limits (the client IP from X-Forwarded-For, one proxy hop)."""

    def apply(**values: int) -> None:
        settings_env(
            TRUSTED_PROXY_HOPS="1",
            **{f"LOGIN_THROTTLE_{name.upper()}": str(v) for name, v in values.items()},
        )

    return apply


def test_fifty_wrong_passwords_are_throttled_without_password_checks(
    registered, auth_client, db, bcrypt_checks
):
    """The audit: 50 wrong passwords in a row all got 401, each a full bcrypt check."""
    answers = [login(auth_client, f"wrong-password-{i}").status_code for i in range(50)]

    assert answers[:6] == [401] * 6  # five free, and a sixth that makes the next one wait
    assert set(answers[6:]) == {429}
    assert len(bcrypt_checks) == 6
    throttled = login(auth_client, PASSWORD)  # the right password too, while waiting
    body = assert_problem(throttled, 429)
    assert throttled.headers["Retry-After"] == str(body["retry_after"]) == "1"
    assert "failed sign-ins" in body["detail"]
    assert len(bcrypt_checks) == 6


def test_the_right_password_works_once_the_wait_is_over(registered, auth_client, limits):
    limits(account_ip_failures=2)
    for _ in range(3):
        login(auth_client, "wrong-password-x", ip="198.51.100.1")
    assert login(auth_client, PASSWORD, ip="198.51.100.1").status_code == 429

    time.sleep(1.05)

    assert login(auth_client, PASSWORD, ip="198.51.100.1").status_code == 200
    # and the success forgot the failures: two more are free again
    assert [login(auth_client, "no", ip="198.51.100.1").status_code for _ in range(2)] == [401] * 2


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)  # the stores' own tests
@pytest.mark.parametrize("throttle_store", ["redis"], indirect=True)  # cover every other pair
def test_waits_grow_with_each_failure_past_the_free_ones(registered, auth_client, limits):
    limits(account_ip_failures=1)
    statuses, waits = [], []
    while len(waits) < 3:
        answer = login(auth_client, "wrong-password-x", ip="198.51.100.1")
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            waits.append(int(answer.headers["Retry-After"]))
            time.sleep(waits[-1] + 0.05)

    assert statuses == [401, 401, 429, 401, 429, 401, 429]  # one failure, one wait
    assert waits == [1, 2, 4]


def test_a_guesser_at_one_address_does_not_lock_the_owner_out(registered, auth_client, limits):
    limits(account_ip_failures=3, account_failures=20)
    for _ in range(12):
        login(auth_client, "wrong-password-x", ip="198.51.100.1")
    assert login(auth_client, PASSWORD, ip="198.51.100.1").status_code == 429

    assert login(auth_client, PASSWORD, ip="203.0.113.9").status_code == 200  # the owner


def test_guessers_spread_over_addresses_delay_the_owner_by_the_short_account_wait_only(
    registered, auth_client, limits
):
    limits(account_ip_failures=3, account_failures=4, account_max_delay_seconds=1)
    for i in range(12):  # a botnet: every guess from a new address
        login(auth_client, "wrong-password-x", ip=f"198.51.100.{i + 1}")
    refused = login(auth_client, PASSWORD, ip="203.0.113.9")
    assert_problem(refused, 429)
    assert refused.headers["Retry-After"] == "1"  # never more than the account's cap

    time.sleep(1.05)

    assert login(auth_client, PASSWORD, ip="203.0.113.9").status_code == 200


def test_one_address_spraying_many_accounts_is_throttled(db, auth_client, limits, bcrypt_checks):
    limits(ip_failures=5)
    answers = [
        login(auth_client, "Winter2026!", email=f"user{i}@example.com", ip="198.51.100.7")
        for i in range(8)
    ]

    assert [a.status_code for a in answers] == [401] * 6 + [429] * 2
    assert len(bcrypt_checks) == 6
    other = login(auth_client, "Winter2026!", email="user9@example.com", ip="203.0.113.9")
    assert other.status_code == 401  # another address is not slowed down


def test_unknown_and_known_accounts_are_throttled_alike(registered, auth_client, limits):
    limits(account_ip_failures=2)
    known = [login(auth_client, "wrong-password-x").status_code for _ in range(4)]
    unknown = [
        login(auth_client, "wrong-password-x", email="nobody@example.com").status_code
        for _ in range(4)
    ]

    assert known == unknown == [401, 401, 401, 429]


def test_the_client_ip_is_the_one_the_trusted_proxy_appended(registered, auth_client, limits):
    """A client writing its own X-Forwarded-For entries cannot pose as fresh addresses: only
    the entry the trusted proxy appended (the last, with one hop) counts."""
    limits(account_ip_failures=2, account_failures=100)
    answers = [
        login(auth_client, "wrong-password-x", ip=f"10.0.0.{i}, 198.51.100.1").status_code
        for i in range(4)
    ]

    assert answers == [401, 401, 401, 429]


def test_without_a_trusted_proxy_the_header_is_ignored(registered, auth_client, settings_env):
    settings_env(LOGIN_THROTTLE_ACCOUNT_IP_FAILURES="2", LOGIN_THROTTLE_ACCOUNT_FAILURES="100")
    answers = [
        login(auth_client, "wrong-password-x", ip=f"198.51.100.{i}").status_code for i in range(4)
    ]

    assert answers == [401, 401, 401, 429]  # all from the socket's address, 127.0.0.1


def test_a_throttled_attempt_writes_nothing_but_its_metric(registered, auth_client, db):
    for _ in range(6):
        login(auth_client, "wrong-password-x")
    before = table_counts(db)

    assert login(auth_client, PASSWORD).status_code == 429

    assert table_counts(db) == before


def test_ipv6_clients_are_counted_by_their_64_network(registered, auth_client, limits):
    limits(account_ip_failures=2, account_failures=100)
    answers = [
        login(auth_client, "wrong-password-x", ip=f"2001:db8:1:2::{i:x}").status_code
        for i in range(1, 5)
    ]

    assert answers == [401, 401, 401, 429]
    assert login(auth_client, PASSWORD, ip="2001:db8:1:3::1").status_code == 200


def test_login_limits_follow_the_settings(settings_env):
    from shared_layer.config import get_settings

    settings_env(LOGIN_THROTTLE_ACCOUNT_MAX_DELAY_SECONDS="30")
    pair, per_ip, account = accounts.login_limits(get_settings())

    assert (pair.free, per_ip.free, account.free) == (5, 50, 20)
    assert (pair.cap_seconds, per_ip.cap_seconds, account.cap_seconds) == (900, 900, 30)
