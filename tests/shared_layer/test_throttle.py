"""The throttle (shared_layer/throttle): the same behaviour from both stores — the database
(SQLite and PostgreSQL) and Redis — including under concurrent attempts."""

from __future__ import annotations

import threading
import time

import pytest

from shared_layer.errors import RateLimited
from shared_layer.throttle import Key, Limit, get_throttle

LIMIT = Limit("test", free=3, cap_seconds=8, base_seconds=1, forget_seconds=60)
OTHER = Limit("other", free=1, cap_seconds=1, base_seconds=1, forget_seconds=60)


def test_delays_double_past_the_free_attempts_up_to_the_cap():
    assert [LIMIT.delay(n) for n in range(1, 10)] == [0, 0, 0, 1, 2, 4, 8, 8, 8]
    assert LIMIT.delay(10**9) == 8  # no overflow however long an attack goes on
    assert LIMIT.memory(9) == 60


def test_a_key_never_stores_its_subject():
    key = Key(LIMIT, "ann@example.com 203.0.113.7")

    assert "ann" not in key.id
    assert "203" not in key.id
    assert key.id.startswith("test:")
    assert key.id != Key(LIMIT, "bob@example.com 203.0.113.7").id


def _refused(key: Key) -> RateLimited:
    with pytest.raises(RateLimited) as refused:
        get_throttle().attempt(key)
    return refused.value


def test_free_attempts_pass_then_each_waits_longer(db, throttle_store):
    key = Key(LIMIT, "ann")
    throttle = get_throttle()

    for _ in range(LIMIT.free + 1):  # the 4th is let through, and makes the next one wait
        throttle.attempt(key)
    first = _refused(key)
    assert first.retry_after == 1
    assert first.status == 429
    time.sleep(1.05)
    throttle.attempt(key)  # the 5th, after its wait: waiting 2 s now
    assert _refused(key).retry_after == 2


def test_a_refused_attempt_counts_nothing(db, throttle_store):
    key = Key(LIMIT, "ann")
    throttle = get_throttle()
    for _ in range(LIMIT.free + 1):
        throttle.attempt(key)

    for _ in range(20):  # hammering while blocked does not lengthen the wait
        _refused(key)
    time.sleep(1.05)

    throttle.attempt(key)
    assert _refused(key).retry_after == 2


def test_keys_are_counted_together_and_refused_by_the_longest_wait(db, throttle_store):
    throttle = get_throttle()
    wide, narrow = Key(LIMIT, "203.0.113.7"), Key(OTHER, "ann")
    throttle.attempt(wide, narrow)
    throttle.attempt(wide, narrow)  # narrow's 2nd: it waits now; wide is still free

    with pytest.raises(RateLimited):
        throttle.attempt(wide, narrow)
    throttle.attempt(wide)  # the refusal above counted nothing on `wide`: its 3rd here
    throttle.attempt(wide)  # its 4th
    with pytest.raises(RateLimited):
        throttle.attempt(wide)


def test_success_gives_the_attempt_back_or_forgets_the_key(db, throttle_store):
    throttle = get_throttle()
    ip, account = Key(LIMIT, "203.0.113.7"), Key(OTHER, "ann")

    for _ in range(10):  # ten successes in a row never wait, and leave nothing behind
        throttle.attempt(ip, account).succeeded(forget=[OTHER])
    for _ in range(LIMIT.free):
        throttle.attempt(ip)  # three failures from the IP are still free
    throttle.attempt(ip).succeeded()  # a 4th, a success, given back: no wait follows
    throttle.attempt(ip)  # counted as the 4th: the next one waits
    _refused(ip)


def test_a_success_past_the_free_attempts_lifts_its_own_wait_but_not_the_count(db, throttle_store):
    throttle = get_throttle()
    ip = Key(LIMIT, "203.0.113.7")
    for _ in range(LIMIT.free + 1):
        throttle.attempt(ip)
    time.sleep(1.05)

    throttle.attempt(ip).succeeded()  # the 5th, given back: its wait goes with it

    throttle.attempt(ip)  # so the next is let through, counted as the 5th again
    assert _refused(ip).retry_after == 2


def test_a_quiet_key_is_forgotten(db, throttle_store):
    brief = Limit("brief", free=1, cap_seconds=1, base_seconds=0.2, forget_seconds=0.5)
    key = Key(brief, "ann")
    get_throttle().attempt(key)
    get_throttle().attempt(key)
    _refused(key)

    time.sleep(0.6)

    get_throttle().attempt(key)  # starts over: free again
    get_throttle().attempt(key)
    _refused(key)


@pytest.fixture
def concurrent_store(request: pytest.FixtureRequest, throttle_store: str) -> str:
    if throttle_store == "database":
        request.getfixturevalue("pg")  # real concurrency: PostgreSQL's row locks
    return throttle_store


def test_a_burst_of_concurrent_attempts_lets_exactly_the_free_ones_and_one_more_through(
    concurrent_store,
):
    key = Key(LIMIT, "ann")
    throttle = get_throttle()
    contenders = 16
    barrier = threading.Barrier(contenders)
    passed: list[int] = []
    refused: list[int] = []

    def attempt() -> None:
        barrier.wait()
        try:
            throttle.attempt(key)
            passed.append(1)
        except RateLimited:
            refused.append(1)

    threads = [threading.Thread(target=attempt) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(passed) == LIMIT.free + 1
    assert len(refused) == contenders - LIMIT.free - 1


def test_concurrent_successes_and_attempts_never_deadlock(concurrent_store):
    """Sign-ins of one account from one address at once: each takes the keys while others
    settle theirs (forget two, give one back). Every store call locks the keys in one order,
    so none of them waits for another in a cycle."""
    pair, per_ip, account = (Limit(name, 10_000, 1) for name in ("pair", "ip", "account"))
    keys = (Key(pair, "ann 203.0.113.7"), Key(per_ip, "203.0.113.7"), Key(account, "ann"))
    throttle = get_throttle()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def sign_in_repeatedly() -> None:
        barrier.wait()
        for _ in range(100):
            try:
                throttle.attempt(*keys).succeeded(forget=[pair, account])
            except Exception as exc:  # a deadlock is what this looks for
                errors.append(exc)

    threads = [threading.Thread(target=sign_in_repeatedly) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []


def test_the_cleanup_passes_over_a_counter_an_attempt_holds(pg):
    """An attempt holding a forgotten counter's row is not waited for: the cleanup deletes the
    others and leaves that one to its next run."""
    from datetime import UTC, datetime, timedelta

    from shared_layer.sql import transaction
    from shared_layer.throttle import delete_expired_counters

    brief = Limit("brief", free=5, cap_seconds=1, forget_seconds=0.1)
    held, free = Key(brief, "held"), Key(brief, "free")
    get_throttle().attempt(held)
    get_throttle().attempt(free)
    time.sleep(0.2)
    with transaction() as db:
        db.one("SELECT key FROM throttle_counters WHERE key = :k FOR UPDATE", {"k": held.id})
        done: list[int] = []
        cleanup = threading.Thread(
            target=lambda: done.append(delete_expired_counters(now=datetime.now(UTC)))
        )
        cleanup.start()
        cleanup.join(timeout=5)
        assert done == [1]  # it finished while the row was held, without it
    assert delete_expired_counters(now=datetime.now(UTC) + timedelta(seconds=1)) == 1
