"""Which passwords may be set, after NIST SP 800-63B: long enough, at most what bcrypt hashes,
and not guessable — no composition rules.

Guessability is zxcvbn's estimate (its dictionaries hold the passwords most common in public
breach corpora, names and words, and it scores keyboard patterns, repeats, sequences and
dates). A password must also be strong without the parts it takes from the account's own
email address or name, or from the product's name: those are the first guesses of anyone who
knows whose account it is, so they are cut out before the rest is scored.

zxcvbn is imported on the first check (about 40 ms): only where a password is set.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from shared_layer.auth import BCRYPT_MAX_BYTES, normalize_password
from shared_layer.config import get_settings

__all__ = ["password_problems"]

_WORDS = re.compile(r"[^\W_]+")  # letters and digits, split at anything else
_SEPARATORS = re.compile(r"[\W_]+")
MIN_PERSONAL_PART = 3  # shorter pieces ("al", "jo") are too common to cut out


def password_problems(password: str, *, user_inputs: Iterable[str | None] = ()) -> list[str]:
    """What is wrong with `password`, in words; empty when it may be set. `user_inputs` are
    the account's own details (email address, name)."""
    settings = get_settings()
    normalized = normalize_password(password)
    problems = []
    if len(normalized) < settings.password_min_length:
        problems.append(f"must be at least {settings.password_min_length} characters")
    if len(normalized.encode("utf-8", "surrogatepass")) > BCRYPT_MAX_BYTES:
        problems.append(f"must be at most {BCRYPT_MAX_BYTES} bytes")
    if problems:
        return problems
    personal = _personal_parts([*user_inputs, settings.sendgrid_from_name])
    remainder = _without(normalized, personal)
    if not remainder:
        return ["is made of your email address or name (or the product's) only"]
    result = _estimate(remainder, personal)
    if result["score"] < settings.password_min_strength:
        problems.append(_weakness(result, cut=remainder != normalized))
    return problems


def _personal_parts(inputs: Iterable[str | None]) -> list[str]:
    """The account's details and their pieces ("ann.lee@example.com" gives the address, the
    local part, "annlee", "ann", "lee", "example"), longest first, lower case."""
    parts: set[str] = set()
    for text in inputs:
        if not text:
            continue
        text = normalize_password(text).casefold()
        local, _, domain = text.partition("@")
        words = _WORDS.findall(local) + _WORDS.findall(domain)[:-1]  # not the TLD
        parts.update([text, local, "".join(_WORDS.findall(local)), *words])
    return sorted((p for p in parts if len(p) >= MIN_PERSONAL_PART), key=len, reverse=True)


def _without(password: str, parts: list[str]) -> str:
    """`password` with every occurrence of `parts` cut out, regardless of case, and — where
    anything was cut — the separators around the cuts with it (they add nothing to a guess)."""
    cut = password
    for part in parts:
        cut = re.sub(re.escape(part), " ", cut, flags=re.IGNORECASE)
    if cut == password:
        return password
    return _SEPARATORS.sub(" ", cut).strip()


def _estimate(password: str, personal: list[str]) -> dict[str, Any]:
    from zxcvbn import zxcvbn

    result: dict[str, Any] = zxcvbn(password, user_inputs=personal)
    return result


def _weakness(result: dict[str, Any], *, cut: bool) -> str:
    feedback = result.get("feedback") or {}
    reason = feedback.get("warning") or "it is easy to guess"
    if cut:
        reason = "without what it takes from your email address or name, " + _lower_first(reason)
    hints = " ".join(feedback.get("suggestions") or [])
    return f"is too easy to guess: {reason.rstrip('.')}." + (f" {hints}" if hints else "")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]
