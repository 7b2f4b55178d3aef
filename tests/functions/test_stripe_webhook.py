"""stripe_webhook through functions-framework: signatures, malformed bodies, each handled event
type, duplicates (also concurrent, on PostgreSQL), out-of-order delivery, and a failure while
applying that leaves nothing behind."""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text

from shared_layer.database import session_scope
from shared_layer.models import BillingCustomer, EmailMessage, Invoice, StripeEvent, Subscription
from tests.conftest import STRIPE_WEBHOOK_SECRET, function_app, table_counts
from tests.support.fake_stripe import event, invoice, stripe_signature, subscription
from tests.support.problems import assert_problem

pytestmark = pytest.mark.usefixtures("stripe_settings")

T0 = 1_760_000_000  # event `created` times in these tests count up from here


@pytest.fixture
def hook(client: Any) -> Any:
    return client("stripe_webhook")


def deliver(hook: Any, evt: dict[str, Any] | str | bytes, **signing: Any) -> Any:
    body = evt if isinstance(evt, str | bytes) else json.dumps(evt)
    if "age" in signing:  # seconds before now (negative: in the future), taken at delivery
        signing["timestamp"] = int(time.time()) - signing.pop("age")
    header = signing.pop("header", None) or stripe_signature(
        body, signing.pop("secret", STRIPE_WEBHOOK_SECRET), **signing
    )
    return hook.post(
        "/", data=body, headers={"Stripe-Signature": header}, content_type="application/json"
    )


def link_customer(user_id: uuid.UUID, customer_id: str | None = None) -> str:
    customer_id = customer_id or "cus_" + uuid.uuid4().hex[:14]
    with session_scope() as session:
        session.add(BillingCustomer(user_id=user_id, stripe_customer_id=customer_id))
    return customer_id


def stored_subscription(sub_id: str) -> Subscription | None:
    with session_scope() as session:
        return session.get(Subscription, sub_id)


def outcomes() -> dict[str, str]:
    with session_scope() as session:
        rows = session.execute(select(StripeEvent.id, StripeEvent.outcome)).all()
        return {event_id: outcome for event_id, outcome in rows}


def sub_event(
    type_: str, sub_id: str, customer: str, created: int, **fields: Any
) -> dict[str, Any]:
    return event(
        f"customer.subscription.{type_}", subscription(sub_id, customer, **fields), created=created
    )


# Refusals: nothing written


@pytest.mark.parametrize(
    "signing",
    [
        {"header": "garbage"},
        {"header": "t=123"},
        {"secret": "whsec_someone_else"},
        {"scheme": "v0"},
        {"age": 400},
        {"age": -400},
    ],
    ids=["malformed", "no-v1", "wrong-secret", "only-v0", "expired", "future"],
)
def test_an_event_that_fails_verification_is_a_400_problem_and_writes_nothing(
    db, hook, user_token, signing
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    before = table_counts(db)

    response = deliver(hook, sub_event("created", "sub_1", customer, T0), **signing)

    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert response.json["type"] == "https://stratus.dev/problems/invalid-signature"
    assert table_counts(db) == before


def test_a_tampered_body_with_a_genuine_signature_is_refused(db, hook, user_token):
    user_id, _ = user_token()
    body = json.dumps(sub_event("created", "sub_1", link_customer(user_id), T0))
    header = stripe_signature(body, STRIPE_WEBHOOK_SECRET)
    before = table_counts(db)

    response = deliver(hook, body.replace("active", "trialing"), header=header)

    assert response.status_code == 400
    assert table_counts(db) == before


def test_a_missing_signature_header_is_refused(db, hook):
    before = table_counts(db)

    response = hook.post("/", json=event("customer.created", {"id": "cus_1"}))

    assert response.status_code == 400
    assert "Stripe-Signature" in response.json["detail"]
    assert table_counts(db) == before


@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        "[1, 2, 3]",
        json.dumps({"object": "event", "type": "x", "created": T0, "data": {"object": {}}}),
        json.dumps({"id": "evt_1", "object": "event", "type": "x", "created": "soon", "data": {}}),
        json.dumps({"id": "evt_1", "object": "charge", "type": "x", "created": T0, "data": {}}),
        json.dumps(event("customer.subscription.updated", {"id": "sub_1", "customer": "cus_x"})),
        json.dumps(event("invoice.paid", {"id": "in_1", "customer": "cus_x", "currency": "usd"})),
        json.dumps(event("payment_intent.succeeded", {"id": "pi_1", "amount": 1.5})).replace(
            "1.5", "NaN"
        ),
    ],
    ids=[
        *("not-json", "array", "no-id", "bad-created", "not-an-event", "sub-no-status"),
        *("no-amount", "nan-stored-as-it-came"),
    ],
)
def test_a_signed_body_that_is_not_a_usable_stripe_event_is_a_400_and_writes_nothing(
    db, hook, user_token, body
):
    user_id, _ = user_token()
    link_customer(user_id, "cus_x")
    before = table_counts(db)

    response = deliver(hook, body)

    assert response.status_code == 400, response.json
    assert response.json["type"] == "https://stratus.dev/problems/invalid-input"
    assert table_counts(db) == before


def _set(evt: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`evt` with the member at the dotted `path` (list items by index) set to `value`."""
    *parents, last = path.split(".")
    node: Any = evt
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return evt


SUB = "data.object"
ITEM = "data.object.items.data.0"
UNSTORABLE = [
    # (event kind, member, value, words the problem must hold)
    ("sub", "created", 10**20, ["created", "less than or equal"]),
    ("sub", f"{ITEM}.current_period_end", 10**20, ["current_period_end", "Unix seconds"]),
    ("sub", f"{ITEM}.current_period_start", -(10**20), ["current_period_start", "Unix seconds"]),
    ("sub", f"{SUB}.canceled_at", 2**64, ["canceled_at", "Unix seconds"]),
    ("sub", f"{SUB}.status", "s" * 33, ["status", "32 characters"]),
    ("sub", f"{SUB}.customer", "cus_" + "c" * 252, ["customer", "255 characters"]),
    ("sub", f"{ITEM}.price.id", "price_" + "p" * 250, ["price", "255 characters"]),
    ("invoice", f"{SUB}.amount_due", 2**63, ["amount_due", "between"]),
    ("invoice", f"{SUB}.amount_paid", -(2**63) - 1, ["amount_paid", "between"]),
    ("invoice", f"{SUB}.attempt_count", 2**31, ["attempt_count", "between"]),
    ("invoice", f"{SUB}.id", "in_" + "i" * 253, ["id", "255 characters"]),
    ("sub", "id", "evt_\x00", ["NUL", "id"]),
    ("sub", "type", "customer.subscription.created\x00", ["NUL", "type"]),
    ("sub", f"{SUB}.status", "act\x00ive", ["NUL", "data.object.status"]),
    ("invoice", f"{SUB}.currency", "u\x00sd", ["NUL", "data.object.currency"]),
    ("sub", f"{SUB}.metadata", {"note": "a\x00b"}, ["NUL", "data.object.metadata.note"]),
]


@pytest.mark.parametrize(
    ("kind", "member", "value", "words"),
    UNSTORABLE,
    ids=[
        *("created-huge", "period-end-huge", "period-start-negative", "canceled-at-2**64"),
        *("status-too-long", "customer-too-long", "price-too-long", "amount-due-2**63"),
        *("amount-paid-below-bigint", "attempts-2**31", "invoice-id-too-long", "nul-event-id"),
        *("nul-type", "nul-status", "nul-currency", "nul-unread-member"),
    ],
)
def test_a_signed_event_that_cannot_be_stored_is_a_400_naming_the_member_and_writes_nothing(
    db, hook, user_token, kind, member, value, words
):
    """Refused while the request reads it, before the group commit: applied, each was a 500
    (a timestamp past datetime's range, a number past its column's, text longer than its
    column or holding a NUL, which PostgreSQL's text and json_populate_recordset refuse)."""
    user_id, _ = user_token()
    customer = link_customer(user_id)
    evt = (
        sub_event("created", "sub_a", customer, T0)
        if kind == "sub"
        else event("invoice.paid", invoice("in_1", customer, amount_paid=2000), created=T0)
    )
    before = table_counts(db)

    response = deliver(hook, _set(evt, member, value))

    assert_problem(response, 400, *words)
    assert table_counts(db) == before


def test_a_header_stamped_past_any_clock_is_refused_not_a_500(db, hook):
    before = table_counts(db)

    response = deliver(hook, event("customer.created", {"id": "cus_1"}), timestamp=10**400)

    assert_problem(response, 400, "in the future")
    assert table_counts(db) == before


def test_created_with_a_zero_fraction_is_an_integer_as_json_schema_has_it(db, hook, user_token):
    user_id, _ = user_token()
    body = json.dumps(sub_event("created", "sub_a", link_customer(user_id), T0))
    response = deliver(hook, body.replace(f'"created": {T0}', f'"created": {T0}.0'))

    assert response.json["outcome"] == "applied"
    assert stored_subscription("sub_a").version == T0


def test_a_bad_event_among_good_ones_arriving_at_once_blocks_none_of_them(pg, user_token):
    """Refused before they reach the group commit, the bad events never share (and so never
    fail) a transaction with the good ones delivered at the same moment or after them."""
    user_id, _ = user_token()
    customer = link_customer(user_id)
    good = [json.dumps(sub_event("created", f"sub_{n}", customer, T0 + n)) for n in range(12)]
    bad = [
        json.dumps(_set(sub_event("created", f"sub_bad_{n}", customer, T0), member, value))
        for n, (member, value) in enumerate(
            [("created", 10**20), (f"{ITEM}.current_period_end", 10**20), ("id", "evt_\x00")] * 4
        )
    ]
    bodies = [body for pair in zip(bad, good, strict=True) for body in pair]

    def post(body: str) -> int:
        response = (
            function_app("stripe_webhook")
            .test_client()
            .post(
                "/",
                data=body,
                headers={"Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)},
                content_type="application/json",
            )
        )
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, bodies))
    after = post(good[0].replace('"sub_0"', '"sub_after"').replace("evt_", "evt_after_"))

    assert statuses == [400, 200] * 12
    assert after == 200
    assert set(outcomes().values()) == {"applied"}
    assert len(outcomes()) == 13
    assert all(stored_subscription(f"sub_{n}").status == "active" for n in range(12))


def test_without_a_webhook_secret_the_function_answers_503_so_stripe_retries(
    db, hook, settings_env
):
    settings_env(STRIPE_WEBHOOK_SECRET=None)

    response = deliver(hook, event("customer.created", {"id": "cus_1"}))

    assert response.status_code == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json["detail"]


# Handled events


def test_subscription_events_set_the_plan_status_and_period_from_the_price(db, hook, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)

    response = deliver(
        hook,
        sub_event(
            "created", "sub_a", customer, T0, price="price_team", period_end=T0 + 86_400 * 30
        ),
    )

    assert response.status_code == 200
    assert response.json == {
        "received": True,
        "event_id": response.json["event_id"],
        "duplicate": False,
        "outcome": "applied",
    }
    stored = stored_subscription("sub_a")
    assert stored is not None
    assert (stored.user_id, stored.plan, stored.status) == (user_id, "team", "active")
    assert stored.current_period_end == datetime.fromtimestamp(T0 + 86_400 * 30, UTC)
    assert stored.version == T0


def test_a_duplicate_event_id_is_acknowledged_with_no_effect(db, hook, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    past_due = sub_event("updated", "sub_a", customer, T0 + 10, status="past_due")
    assert deliver(hook, past_due).json["outcome"] == "applied"
    with session_scope() as session:  # were the event applied again, it would win over this
        session.execute(text("UPDATE subscriptions SET status = 'active', version = 0"))
    before = table_counts(db)

    again = deliver(hook, past_due)

    assert again.status_code == 200
    assert (again.json["duplicate"], again.json["outcome"]) == (True, "duplicate")
    assert stored_subscription("sub_a").status == "active"
    assert table_counts(db) == before


def test_events_out_of_order_never_move_a_subscription_back(db, hook, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    created = sub_event("created", "sub_a", customer, T0, status="incomplete")
    active = sub_event("updated", "sub_a", customer, T0 + 5)
    late = sub_event("updated", "sub_a", customer, T0 + 9, status="past_due")

    results = [deliver(hook, e).json["outcome"] for e in (late, created, active)]

    assert results == ["applied", "stale", "stale"]
    stored = stored_subscription("sub_a")
    assert (stored.status, stored.version) == ("past_due", T0 + 9)
    assert stored.past_due_since == datetime.fromtimestamp(T0 + 9, UTC)


def test_a_deleted_subscription_is_never_revived_by_an_update_of_the_same_second(
    db, hook, user_token
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    deleted = sub_event("deleted", "sub_a", customer, T0 + 5, status="canceled")
    updated = sub_event("updated", "sub_a", customer, T0 + 5, status="active")

    assert [deliver(hook, e).json["outcome"] for e in (deleted, updated)] == ["applied", "stale"]
    assert stored_subscription("sub_a").status == "canceled"


def test_checkout_completed_links_the_customer_so_later_events_find_the_user(db, hook, user_token):
    user_id, _ = user_token()
    session_obj = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "customer": "cus_new",
        "client_reference_id": str(user_id),
        "mode": "subscription",
        "subscription": "sub_a",
    }

    linked = deliver(hook, event("checkout.session.completed", session_obj, created=T0))
    sub = deliver(hook, sub_event("created", "sub_a", "cus_new", T0 + 1))

    assert linked.json["outcome"] == "applied"
    assert sub.json["outcome"] == "applied"
    assert stored_subscription("sub_a").user_id == user_id


def test_an_event_for_a_customer_no_user_has_is_stored_as_unmatched(db, hook):
    response = deliver(hook, sub_event("created", "sub_x", "cus_stranger", T0))

    assert response.json["outcome"] == "unmatched"
    assert outcomes()[response.json["event_id"]] == "unmatched"
    assert stored_subscription("sub_x") is None


def test_other_event_types_are_stored_and_change_nothing_else(db, hook):
    before = table_counts(db)

    response = deliver(hook, event("payment_intent.succeeded", {"id": "pi_1"}, created=T0))

    assert response.json["outcome"] == "ignored"
    after = table_counts(db)
    assert after["stripe_events"] == before["stripe_events"] + 1
    assert {k: v for k, v in after.items() if k != "stripe_events"} == {
        k: v for k, v in before.items() if k != "stripe_events"
    }


def test_the_stored_event_is_the_signed_body_with_every_character_it_held(db, hook):
    """The body is stored as sent (PostgreSQL gets it inline in the statement's text): quotes,
    backslashes, `%`, what looks like SQL, and text beyond ASCII, raw and escaped."""
    awkward = {
        "id": "pi_1",
        "description": "it's a \\ back'slash \"quoted\" 100% :name E'' '); DROP TABLE users; --",
        "name": "Zoë ✓ 日本",
        "nested": [{"a": None, "b": 1.5, "c": True}],
    }
    evt = event("payment_intent.succeeded", awkward, created=T0)
    body = json.dumps(evt, ensure_ascii=False).replace("Zoë", "Zo\\u00eb")  # raw and escaped

    response = deliver(hook, body.encode())

    assert response.status_code == 200, response.json
    with session_scope() as session:
        stored = session.get(StripeEvent, evt["id"])
        assert stored is not None
        assert stored.payload == evt


def test_invoices_are_stored_in_minor_units_and_a_failed_payment_emails_the_user(
    db, hook, user_token
):
    user_id, _ = user_token(email="payer@example.com")
    customer = link_customer(user_id)
    deliver(hook, sub_event("created", "sub_a", customer, T0))
    failed = invoice("in_1", customer, subscription_id="sub_a", amount_due=1999, currency="EUR")

    response = deliver(hook, event("invoice.payment_failed", failed, created=T0 + 1))

    assert response.json["outcome"] == "applied"
    with session_scope() as session:
        stored = session.get(Invoice, "in_1")
        assert (stored.status, stored.amount_due, stored.currency) == (
            "payment_failed",
            1999,
            "eur",
        )
        mail = session.scalars(select(EmailMessage)).one()
    assert (mail.to_email, mail.template, mail.status) == (
        "payer@example.com",
        "payment_failed",
        "outbox",
    )
    assert "EUR 19.99" in mail.body_text
    assert "https://invoice.stripe.com/i/in_1" in mail.body_text


def test_a_paid_invoice_stays_paid_when_an_older_failure_arrives_late(db, hook, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    paid = invoice("in_1", customer, amount_due=2000, amount_paid=2000, status="paid")
    failed = invoice("in_1", customer, amount_due=2000)

    first = deliver(hook, event("invoice.paid", paid, created=T0 + 5))
    late = deliver(hook, event("invoice.payment_failed", failed, created=T0 + 1))

    assert (first.json["outcome"], late.json["outcome"]) == ("applied", "stale")
    with session_scope() as session:
        stored = session.get(Invoice, "in_1")
        assert (stored.status, stored.amount_paid) == ("paid", 2000)
        assert session.scalar(select(func.count()).select_from(EmailMessage)) == 0


# A failure while applying


def _install_failing_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION stratus_test_boom() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.id = 'sub_boom' THEN RAISE EXCEPTION 'disk on fire'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER stratus_test_boom BEFORE INSERT ON subscriptions "
                    "FOR EACH ROW EXECUTE FUNCTION stratus_test_boom()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER stratus_test_boom BEFORE INSERT ON subscriptions "
                    "WHEN NEW.id = 'sub_boom' BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
                )
            )


def _drop_failing_trigger(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER IF EXISTS stratus_test_boom ON subscriptions"))
            conn.execute(text("DROP FUNCTION IF EXISTS stratus_test_boom()"))
        else:
            conn.execute(text("DROP TRIGGER IF EXISTS stratus_test_boom"))


def test_a_failure_while_applying_is_a_5xx_that_leaves_nothing_and_the_retry_succeeds(
    db, hook, user_token
):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    evt = sub_event("created", "sub_boom", customer, T0)
    before = table_counts(db)
    _install_failing_trigger(db)
    try:
        failed = deliver(hook, evt)
        assert failed.status_code >= 500
        assert "disk on fire" not in failed.get_data(as_text=True)
        assert table_counts(db) == before  # neither the event nor half its effect
    finally:
        _drop_failing_trigger(db)

    retried = deliver(hook, evt)

    assert (retried.status_code, retried.json["outcome"]) == (200, "applied")
    assert stored_subscription("sub_boom").status == "active"


# Concurrency (PostgreSQL)


def _deliver_all(bodies: list[str], threads: int = 8) -> list[dict[str, Any]]:
    """POST each signed body from a pool of threads, each with its own test client."""
    local = threading.local()

    def post(body: str) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = function_app("stripe_webhook").test_client()
        response = local.client.post(
            "/",
            data=body,
            headers={"Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)},
            content_type="application/json",
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        return dict(response.json)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(post, bodies))


def test_two_copies_of_an_event_arriving_at_once_take_effect_once(pg, user_token):
    user_id, _ = user_token()
    customer = link_customer(user_id)
    body = json.dumps(sub_event("created", "sub_a", customer, T0))

    results = _deliver_all([body] * 8)

    assert sorted(r["duplicate"] for r in results) == [False] + [True] * 7
    assert len(outcomes()) == 1
    assert stored_subscription("sub_a").status == "active"


def test_100_shuffled_events_each_delivered_three_times_concurrently_end_in_the_newest_state(
    pg, user_token
):
    """Four subscriptions, 25 events each with distinct `created` times and random states; all
    300 deliveries shuffled and sent from 8 threads at once."""
    rng = random.Random(3)
    user_id, _ = user_token()
    customer = link_customer(user_id)
    events: list[dict[str, Any]] = []
    for n in range(4):
        for i in range(25):
            fields = {
                "status": rng.choice(["active", "trialing", "past_due", "unpaid", "incomplete"]),
                "price": rng.choice(["price_pro", "price_team"]),
                "period_end": T0 + i * 1000 + n,
                "cancel_at_period_end": rng.random() < 0.5,
            }
            kind = "created" if i == 0 else "updated"
            events.append(sub_event(kind, f"sub_{n}", customer, T0 + i * 10 + n, **fields))
    deliveries = [json.dumps(e) for e in events for _ in range(3)]
    rng.shuffle(deliveries)

    results = _deliver_all(deliveries)

    first_deliveries = Counter(r["event_id"] for r in results if not r["duplicate"])
    assert len(first_deliveries) == 100
    assert set(first_deliveries.values()) == {1}
    stored = outcomes()
    assert len(stored) == 100
    assert set(stored.values()) <= {"applied", "stale"}
    for n in range(4):
        newest = max(
            (e for e in events if e["data"]["object"]["id"] == f"sub_{n}"),
            key=lambda e: e["created"],
        )
        obj = newest["data"]["object"]
        row = stored_subscription(f"sub_{n}")
        assert row.version == newest["created"]
        assert row.status == obj["status"]
        assert (
            row.plan
            == {"price_pro": "pro", "price_team": "team"}[obj["items"]["data"][0]["price"]["id"]]
        )
        assert row.cancel_at_period_end == obj["cancel_at_period_end"]
        assert row.current_period_end == datetime.fromtimestamp(
            obj["items"]["data"][0]["current_period_end"], UTC
        )
        assert stored[newest["id"]] == "applied"
