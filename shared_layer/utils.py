"""Small helpers the services use (the seed's `utils`, kept to what the code calls)."""

from __future__ import annotations

from shared_layer.config import get_settings


def password_problems(password: str) -> list[str]:
    """What makes a password too weak, in words; empty when it is acceptable."""
    problems = []
    minimum = get_settings().password_min_length
    if len(password) < minimum:
        problems.append(f"must be at least {minimum} characters")
    if password.isalpha() or password.isdigit():
        problems.append("must mix letters with digits or symbols")
    if len(password.encode()) > 72:
        problems.append("must be at most 72 bytes")
    return problems
