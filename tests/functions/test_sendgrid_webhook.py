"""sendgrid_webhook through functions-framework: batches signed with a P-256 key made for each
test, tampered bodies and timestamps refused, large batches with duplicates stored once, the
email history and the suppression list."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from shared_layer.database import session_scope
from shared_layer.models import EmailEvent, EmailSuppression
from tests.conftest import function_app, table_counts
from tests.support.fake_sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EventSigner,
    sendgrid_event,
)
from tests.support.problems import assert_problem


@pytest.fixture
def hook(client: Any) -> Any:
    return client("sendgrid_webhook")


def post(hook: Any, signer: EventSigner, batch: Any, **headers: Any) -> Any:
    body = batch if isinstance(batch, bytes) else json.dumps(batch).encode()
    signed = {**signer.headers(body), **headers}
    return hook.post("/", data=body, headers=signed)


def stored_events() -> dict[str, EmailEvent]:
    with session_scope() as session:
        return {e.sg_event_id: e for e in session.scalars(select(EmailEvent))}


def suppressions() -> dict[str, str]:
    with session_scope() as session:
        rows = session.execute(select(EmailSuppression.email, EmailSuppression.reason)).all()
        return {email: reason for email, reason in rows}


def test_a_signed_batch_is_stored_as_each_users_email_history(
    db, hook, sendgrid_signer, user_token
):
    user_id, _ = user_token(email="ann@example.com")
    batch = [
        sendgrid_event("Ann@Example.com", "processed", sg_event_id="e1"),
        sendgrid_event("ann@example.com", "delivered", sg_event_id="e2", response="250 OK"),
        sendgrid_event("nobody@example.com", "open", sg_event_id="e3", useragent="Mozilla"),
    ]

    response = post(hook, sendgrid_signer, batch)

    assert response.status_code == 200
    assert response.json == {"received": 3, "stored": 3, "duplicates": 0, "suppressed": 0}
    events = stored_events()
    assert {k: (e.email, e.user_id, e.event) for k, e in events.items()} == {
        "e1": ("ann@example.com", user_id, "processed"),
        "e2": ("ann@example.com", user_id, "delivered"),
        "e3": ("nobody@example.com", None, "open"),
    }
    assert events["e2"].reason == "250 OK"
    assert events["e3"].payload["useragent"] == "Mozilla"  # every field kept


@pytest.mark.parametrize(
    "kind", ["bounce", "dropped", "spamreport", "unsubscribe", "group_unsubscribe"]
)
def test_events_that_call_for_it_put_the_address_on_the_suppression_list(
    db, hook, sendgrid_signer, kind
):
    batch = [
        sendgrid_event("gone@example.com", kind, reason="550 no such user"),
        sendgrid_event("fine@example.com", "delivered"),
    ]

    response = post(hook, sendgrid_signer, batch)

    assert response.json["suppressed"] == 1
    assert suppressions() == {"gone@example.com": kind}


def test_a_1000_event_batch_with_duplicates_stores_each_event_once(db, hook, sendgrid_signer):
    unique = [
        sendgrid_event(f"user{i % 50}@example.com", "delivered", sg_event_id=f"ev-{i}")
        for i in range(800)
    ]
    batch = unique + unique[:150] + [dict(e, event="bounce") for e in unique[:50]]
    assert len(batch) == 1000

    first = post(hook, sendgrid_signer, batch)
    again = post(hook, sendgrid_signer, batch)

    assert first.json == {"received": 1000, "stored": 800, "duplicates": 200, "suppressed": 0}
    assert again.json == {"received": 1000, "stored": 0, "duplicates": 1000, "suppressed": 0}
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(EmailEvent)) == 800


def test_a_batch_over_the_general_body_limit_is_accepted_up_to_its_own_limit(
    db, hook, sendgrid_signer, settings_env
):
    settings_env(MAX_BODY_BYTES="65536", SENDGRID_WEBHOOK_MAX_BODY_BYTES="1048576")
    batch = [sendgrid_event(f"u{i}@example.com", "delivered", pad="x" * 100) for i in range(1000)]
    body = json.dumps(batch).encode()
    assert 65536 < len(body) < 1048576

    too_large = post(hook, sendgrid_signer, body + b" " * 1048576)
    accepted = post(hook, sendgrid_signer, body)

    assert too_large.status_code == 413
    assert accepted.status_code == 200
    assert accepted.json["stored"] == 1000


# Refusals: nothing written


@pytest.mark.parametrize(
    "case",
    [
        "tampered-body",
        "tampered-timestamp",
        "stale",
        "future",
        "no-signature",
        "no-timestamp",
        "other-key",
        "not-base64",
        "timestamp-not-a-number",
    ],
)
def test_a_batch_that_fails_verification_is_a_400_and_writes_nothing(
    db, hook, sendgrid_signer, case
):
    batch = json.dumps([sendgrid_event("a@example.com", "bounce")]).encode()
    now = int(time.time())
    headers = sendgrid_signer.headers(batch)
    body = batch
    if case == "tampered-body":
        body = batch.replace(b"bounce", b"open")
    elif case == "tampered-timestamp":
        headers[TIMESTAMP_HEADER] = str(now - 1)
    elif case in ("stale", "future"):
        headers = sendgrid_signer.headers(batch, timestamp=now + (-400 if case == "stale" else 400))
    elif case == "no-signature":
        del headers[SIGNATURE_HEADER]
    elif case == "no-timestamp":
        del headers[TIMESTAMP_HEADER]
    elif case == "other-key":
        headers = EventSigner().headers(batch)
    elif case == "not-base64":
        headers[SIGNATURE_HEADER] = "%%%not base64%%%"
    elif case == "timestamp-not-a-number":
        headers[TIMESTAMP_HEADER] = "yesterday"
    before = table_counts(db)

    response = hook.post("/", data=body, headers=headers)

    assert response.status_code == 400
    assert response.json["type"] == "https://stratus.dev/problems/invalid-signature"
    assert table_counts(db) == before


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"email": "a@example.com"}',
        b'[{"email": "a@example.com", "event": "open", "timestamp": 1}]',
        b'[{"email": "a@example.com", "event": "open", "sg_event_id": "x", "timestamp": "now"}]',
        b"[1, 2]",
    ],
    ids=["not-json", "object", "no-event-id", "bad-timestamp", "not-objects"],
)
def test_a_signed_body_that_is_not_an_array_of_events_is_a_400_and_writes_nothing(
    db, hook, sendgrid_signer, body
):
    before = table_counts(db)

    response = post(hook, sendgrid_signer, body)

    assert response.status_code == 400
    assert response.json["type"] == "https://stratus.dev/problems/invalid-input"
    assert table_counts(db) == before


@pytest.mark.parametrize(
    "timestamp",
    ["1" * 400, "-" + "9" * 300, str(2**64), "1.7e9", " ٣ ", "1_700_000_000"],
    ids=["400-digits", "minus-300-digits", "2**64", "float", "arabic-digits", "underscores"],
)
def test_an_unsigned_batch_whose_timestamp_is_not_unix_seconds_is_a_400_naming_the_header(
    db, hook, sendgrid_signer, timestamp
):
    """Hundreds of digits overflowed the float arithmetic of the window check: a 500 before
    the signature was even looked at."""
    body = json.dumps([sendgrid_event("a@example.com")]).encode()
    headers = {**sendgrid_signer.headers(body), TIMESTAMP_HEADER: timestamp}
    before = table_counts(db)

    response = hook.post("/", data=body, headers=headers)

    problem = assert_problem(response, 400, TIMESTAMP_HEADER, "Unix seconds")
    assert problem["type"] == "https://stratus.dev/problems/invalid-signature"
    assert table_counts(db) == before


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("email", "a\x00b@example.com", ["NUL"]),
        ("event", "bou\x00nce", ["NUL"]),
        ("sg_event_id", "ev\x00-1", ["NUL"]),
        ("sg_message_id", "m\x00", ["NUL"]),
        ("reason", "550 \x00", ["NUL"]),
        ("response", "250 \x00", ["NUL"]),
        ("response", {"code": 250}, ["string"]),
        ("sg_message_id", "m" * 256, ["255"]),
        ("email", "\u0130" * 160 + "@example.com", ["320"]),
        ("timestamp", 10**30, ["less than"]),
    ],
    ids=[
        *("nul-email", "nul-event", "nul-id", "nul-message-id", "nul-reason", "nul-response"),
        *("response-not-text", "message-id-too-long", "email-too-long-lower-cased"),
        "timestamp-huge",
    ],
)
def test_a_signed_event_whose_stored_fields_cannot_be_stored_is_a_400_naming_the_field(
    db, hook, sendgrid_signer, field, value, words
):
    """Every field the batch stores is checked as its column holds it (no NUL in text, the
    column's length once lower-cased), before anything is written."""
    good = sendgrid_event("fine@example.com", "bounce", sg_event_id="ok-1")
    bad = {**sendgrid_event("bad@example.com", "bounce", sg_event_id="bad-1"), field: value}
    before = table_counts(db)

    response = post(hook, sendgrid_signer, [good, bad])

    assert_problem(response, 400, *words, fields={f"1.{field}"})
    assert table_counts(db) == before


def test_a_nul_or_a_huge_number_in_a_field_only_the_payload_keeps_is_stored(
    db, hook, sendgrid_signer
):
    """The payload is a JSON column, which holds an escaped NUL; a number past a double's range
    is refused, as it would be stored as `Infinity`, which no JSON column takes."""
    kept = sendgrid_event("a@example.com", sg_event_id="kept", useragent="Moz\x00illa")
    body = json.dumps([kept]).encode()
    huge = json.dumps([sendgrid_event("a@example.com", big=1.5)]).encode().replace(b"1.5", b"1e400")
    before = table_counts(db)

    stored = post(hook, sendgrid_signer, body)
    refused = post(hook, sendgrid_signer, huge)

    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert stored_events()["kept"].payload["useragent"] == "Moz\x00illa"
    assert_problem(refused, 400, "finite", fields={"0.big"})
    assert table_counts(db)["email_events"] == before["email_events"] + 1


def test_a_timestamp_with_a_zero_fraction_is_an_integer_as_json_schema_has_it(
    db, hook, sendgrid_signer
):
    event = sendgrid_event("a@example.com", sg_event_id="whole", timestamp=1_700_000_000)
    body = json.dumps([event]).encode().replace(b"1700000000", b"1700000000.0")

    response = post(hook, sendgrid_signer, body)

    assert response.status_code == 200, response.get_data(as_text=True)
    assert stored_events()["whole"].occurred_at.timestamp() == 1_700_000_000


def test_a_broken_batch_of_many_events_names_only_its_first_faults(db, hook, sendgrid_signer):
    body = json.dumps([{"email": "a@example.com"}] * 500).encode()

    response = post(hook, sendgrid_signer, body)

    assert response.status_code == 400
    assert 0 < len(response.json["errors"]) <= 20


def test_without_a_configured_key_the_webhook_answers_503(db, hook):
    body = json.dumps([sendgrid_event("a@example.com")]).encode()

    response = hook.post("/", data=body, headers=EventSigner().headers(body))

    assert response.status_code == 503
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in response.json["detail"]


def test_a_configured_key_that_is_not_a_p256_public_key_is_a_503_not_a_400(db, hook, settings_env):
    settings_env(SENDGRID_WEBHOOK_PUBLIC_KEY=base64.b64encode(b"not a key").decode())
    body = json.dumps([sendgrid_event("a@example.com")]).encode()

    response = hook.post("/", data=body, headers=EventSigner().headers(body))

    assert response.status_code == 503
    assert "SENDGRID_WEBHOOK_PUBLIC_KEY" in response.json["detail"]


def test_overlapping_batches_arriving_at_once_store_each_event_once(pg, sendgrid_signer):
    """Two batches sharing half their events, in opposite orders, posted at the same moment."""
    events = [
        sendgrid_event(f"u{i}@example.com", "bounce", sg_event_id=f"ev-{i}") for i in range(300)
    ]
    batches = [events[:200], list(reversed(events[100:]))]

    def send(batch: list[dict[str, Any]]) -> dict[str, int]:
        body = json.dumps(batch).encode()
        client = function_app("sendgrid_webhook").test_client()
        response = client.post("/", data=body, headers=sendgrid_signer.headers(body))
        assert response.status_code == 200, response.get_data(as_text=True)
        return dict(response.json)

    with ThreadPoolExecutor(max_workers=2) as pool:
        receipts = list(pool.map(send, batches))

    assert sum(r["stored"] for r in receipts) == 300
    assert sum(r["suppressed"] for r in receipts) == 300
    assert len(stored_events()) == 300
    assert len(suppressions()) == 300
