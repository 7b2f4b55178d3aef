"""shared_layer.utils: ids, text, email syntax, merging, retries, password rules."""

from __future__ import annotations

import itertools
import uuid

import pytest

from shared_layer import utils


def test_generate_uuid_is_a_fresh_uuid4_each_time():
    first, second = utils.generate_uuid(), utils.generate_uuid()

    assert uuid.UUID(first).version == 4
    assert first != second


@pytest.mark.parametrize("length", [1, 8, 32])
def test_generate_short_id_has_the_asked_length_and_alphabet(length):
    short = utils.generate_short_id(length)

    assert len(short) == length
    assert short.isascii()
    assert short.isalnum()


def test_generate_short_id_does_not_repeat():
    assert len({utils.generate_short_id(12) for _ in range(1000)}) == 1000


def test_generate_short_id_refuses_zero_length():
    with pytest.raises(ValueError, match="length"):
        utils.generate_short_id(0)


def test_truncate_text_leaves_short_text_alone():
    assert utils.truncate_text("hello", 5) == "hello"


def test_truncate_text_cuts_to_max_length_including_the_suffix():
    cut = utils.truncate_text("abcdefghij", 8)

    assert cut == "abcde..."
    assert len(cut) == 8
    assert utils.truncate_text("abcdefghij", 4, suffix="…") == "abc…"


def test_truncate_text_refuses_a_limit_smaller_than_its_suffix():
    with pytest.raises(ValueError, match="suffix"):
        utils.truncate_text("abcdef", 2)


def test_chunk_text_without_overlap_partitions_the_text():
    assert utils.chunk_text("abcdefghij", 4) == ["abcd", "efgh", "ij"]


def test_chunk_text_with_overlap_repeats_the_seam():
    chunks = utils.chunk_text("abcdefghij", 4, overlap=2)

    assert chunks == ["abcd", "cdef", "efgh", "ghij"]
    assert all(a[-2:] == b[:2] for a, b in itertools.pairwise(chunks))


def test_chunk_text_covers_every_character_and_ends_once():
    text = "x" * 95 + "END"

    chunks = utils.chunk_text(text, 10, overlap=3)

    assert chunks[-1].endswith("END")
    assert sum(1 for c in chunks if "END" in c) == 1
    assert "".join(c if i == 0 else c[3:] for i, c in enumerate(chunks)) == text


def test_chunk_text_of_empty_or_short_text():
    assert utils.chunk_text("", 5) == []
    assert utils.chunk_text("abc", 5, overlap=4) == ["abc"]


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (4, 4), (4, -1)])
def test_chunk_text_refuses_impossible_sizes(size, overlap):
    with pytest.raises(ValueError, match=r"size|overlap"):
        utils.chunk_text("abc", size, overlap=overlap)


@pytest.mark.parametrize(
    ("email", "valid"),
    [
        ("ann@example.com", True),
        ("ann.lee+tag@sub.example.co.uk", True),
        ("ann@", False),
        ("@example.com", False),
        ("ann example@example.com", False),
        ("ann@@example.com", False),
        ("", False),
    ],
)
def test_is_valid_email_checks_syntax(email, valid):
    assert utils.is_valid_email(email) is valid


def test_deep_merge_merges_nested_mappings_without_changing_inputs():
    base = {"model": "gpt-4o-mini", "limits": {"tokens": 1024, "timeout": 60}, "tools": ["a"]}
    override = {"limits": {"timeout": 120}, "tools": ["b"]}

    merged = utils.deep_merge(base, override)

    assert merged == {
        "model": "gpt-4o-mini",
        "limits": {"tokens": 1024, "timeout": 120},
        "tools": ["b"],  # lists are replaced, not concatenated
    }
    assert base["limits"] == {"tokens": 1024, "timeout": 60}
    assert override == {"limits": {"timeout": 120}, "tools": ["b"]}


def test_deep_merge_lets_a_scalar_replace_a_mapping():
    assert utils.deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}


class Flaky:
    """Fails `failures` times with `error`, then returns "ok"."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self, value: str = "ok") -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return value


def test_retry_succeeds_after_transient_failures_with_exponential_waits():
    waits: list[float] = []
    flaky = Flaky(failures=3)

    call = utils.retry(max_attempts=4, delay=0.5, sleep=waits.append)(flaky)

    assert call("done") == "done"
    assert flaky.calls == 4
    assert waits == [0.5, 1.0, 2.0]


def test_retry_reraises_the_last_error_after_max_attempts():
    waits: list[float] = []
    flaky = Flaky(failures=10)

    call = utils.retry(max_attempts=3, delay=0.1, sleep=waits.append)(flaky)

    with pytest.raises(ConnectionError, match="failure 3"):
        call()
    assert flaky.calls == 3
    assert len(waits) == 2


def test_retry_does_not_retry_other_exceptions():
    flaky = Flaky(failures=1, error=ValueError)

    call = utils.retry(max_attempts=5, delay=0, exceptions=(ConnectionError,))(flaky)

    with pytest.raises(ValueError, match="failure 1"):
        call()
    assert flaky.calls == 1


def test_retry_caps_the_wait_at_max_delay():
    waits: list[float] = []

    call = utils.retry(max_attempts=6, delay=1, max_delay=3, sleep=waits.append)(Flaky(5))

    assert call() == "ok"
    assert waits == [1, 2, 3, 3, 3]


def test_retry_keeps_the_function_name_for_logs():
    @utils.retry(max_attempts=2, delay=0)
    def fetch_quota() -> int:
        return 7

    assert fetch_quota() == 7
    assert fetch_quota.__name__ == "fetch_quota"


def test_retry_refuses_zero_attempts():
    with pytest.raises(ValueError, match="max_attempts"):
        utils.retry(max_attempts=0)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("s3cret-pass", "at least 15 characters"),
        ("1234567890123456", "too easy to guess"),
        ("iloveyouiloveyou", "too easy to guess"),
        ("é" * 36 + "1", "at most 72 bytes"),
    ],
)
def test_password_problems_name_what_is_wrong(password, problem):
    assert any(problem in p for p in utils.password_problems(password))


@pytest.mark.parametrize("password", ["onlylettersbutlongandrare", "7391046285 dwarf lamp"])
def test_password_problems_set_no_composition_rules(password):
    assert utils.password_problems(password) == []


def test_password_problems_cut_out_the_accounts_own_details():
    ours = ["kim.nakamura@acme-widgets.io", "Kim Nakamura"]

    assert utils.password_problems("NakamuraKim-acme-widgets-7", user_inputs=ours)
    assert utils.password_problems("NakamuraKim-acme-widgets-7") == []


def test_password_rules_follow_settings(settings_env):
    settings_env(PASSWORD_MIN_LENGTH="20", PASSWORD_MIN_STRENGTH="4")

    assert utils.password_problems("7391046285 dwarf lamp") == []
    assert utils.password_problems("s3cret-pass-word-1") == ["must be at least 20 characters"]
    assert utils.password_problems("summer2026summer")  # scores 3, not the 4 asked for
