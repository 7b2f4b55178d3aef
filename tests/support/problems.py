"""The one check every "bad input" test makes of an error response."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_KEYS = {"type", "title", "status", "detail"}


def assert_problem(
    response: Any,
    status: int,
    *words: str,
    fields: set[str] | None = None,
    never: Iterable[str] = (),
) -> dict[str, Any]:
    """An RFC 9457 problem with `status` whose text names each of `words` (case-insensitive)
    and, when `fields` is given, exactly those fields in `errors`; it leaks no stack trace and
    none of the strings in `never` (secrets, passwords)."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == PROBLEM_CONTENT_TYPE
    body = response.get_json(force=True)
    assert set(body) >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"].startswith("https://")
    assert body["detail"]
    lowered = json.dumps(body).lower()
    for word in words:
        assert word.lower() in lowered, (word, body)
    for leak in ("Traceback", 'File "', *never):
        assert leak not in text
    if fields is not None:
        assert {e["field"] for e in body["errors"]} == fields
        for name in fields:
            assert name in body["detail"]
    return dict(body)
