"""billing through functions-framework, with the real `stripe` client against the loopback
Stripe API: checkout (one customer per user, also under concurrency), portal, the plan and
usage read-out, bad input and Stripe failures."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from shared_layer.database import session_scope
from shared_layer.models import Agent, BillingCustomer, Subscription
from tests.conftest import STRIPE_WEBHOOK_SECRET, function_app, table_counts
from tests.support.fake_sendgrid import sendgrid_event
from tests.support.fake_stripe import event, stripe_signature, subscription
from tests.support.ledger import spend
from tests.support.openapi import load_spec, validated_client


@pytest.fixture
def billing(client: Any) -> Any:
    return client("billing")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": token}


def add_subscription(user_id: uuid.UUID, **columns: Any) -> str:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": "sub_" + uuid.uuid4().hex[:12],
        "user_id": user_id,
        "stripe_customer_id": "cus_" + uuid.uuid4().hex[:12],
        "plan": "pro",
        "price_id": "price_pro",
        "status": "active",
        "current_period_start": now - timedelta(days=3),
        "current_period_end": now + timedelta(days=27),
        "version": 1,
        **columns,
    }
    with session_scope() as session:
        session.add(Subscription(**values))
    return str(values["id"])


def customers() -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(BillingCustomer)) or 0)


# Checkout


def test_checkout_creates_the_customer_once_and_reuses_it(db, billing, fake_stripe, user_token):
    user_id, token = user_token(email="buyer@example.com")

    first = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))
    second = billing.post("/checkout", json={"plan": "team"}, headers=bearer(token))

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json["url"].startswith("https://checkout.stripe.com/")
    assert first.json["plan"] == "pro"
    created = fake_stripe.calls("POST", "/v1/customers")
    assert len(created) == 1
    assert created[0].params == {
        "email": "buyer@example.com",
        "metadata": {"user_id": str(user_id)},
    }
    assert created[0].headers["Idempotency-Key"] == f"stratus-customer-{user_id}"
    sessions = fake_stripe.calls("POST", "/v1/checkout/sessions")
    customer_id = next(iter(fake_stripe.customers))
    assert [s.params["customer"] for s in sessions] == [customer_id, customer_id]
    assert [s.params["line_items"] for s in sessions] == [
        [{"price": "price_pro", "quantity": "1"}],
        [{"price": "price_team", "quantity": "1"}],
    ]
    assert sessions[0].params["client_reference_id"] == str(user_id)
    assert sessions[0].params["subscription_data"]["metadata"]["user_id"] == str(user_id)
    assert customers() == 1


def test_concurrent_first_checkouts_create_one_customer(pg, fake_stripe, user_token):
    _, token = user_token()
    local = threading.local()

    def checkout(_: int) -> int:
        if not hasattr(local, "client"):
            local.client = function_app("billing").test_client()
        response = local.client.post("/checkout", json={"plan": "pro"}, headers=bearer(token))
        return int(response.status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(checkout, range(8)))

    assert statuses == [201] * 8
    assert len(fake_stripe.customers) == 1
    assert customers() == 1
    sessions = fake_stripe.calls("POST", "/v1/checkout/sessions")
    assert {s.params["customer"] for s in sessions} == set(fake_stripe.customers)


def test_checkout_is_refused_to_a_caller_already_on_a_paid_plan(
    db, billing, fake_stripe, user_token
):
    user_id, token = user_token()
    add_subscription(user_id, plan="team")

    response = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))

    assert response.status_code == 409
    assert response.json["plan"] == "team"
    assert "portal" in response.json["detail"]
    assert fake_stripe.requests == []


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (json.dumps({"plan": "free"}), "application/json", 400),
        (json.dumps({"plan": "gold"}), "application/json", 400),
        (json.dumps({"plan": 1}), "application/json", 400),
        (json.dumps({}), "application/json", 400),
        (json.dumps({"plan": "pro", "coupon": "FREE"}), "application/json", 400),
        ("{plan", "application/json", 400),
        ("plan=pro", "application/x-www-form-urlencoded", 415),
        (json.dumps({"plan": "pro", "x": "y" * 5000}), "application/json", 413),
        (json.dumps({"plan": " pro "}), "application/json", 400),
    ],
    ids=[
        *("free", "unknown", "wrong-type", "missing", "unknown-field", "malformed", "form"),
        *("large", "padded"),
    ],
)
def test_bad_checkout_input_is_a_4xx_problem_with_nothing_written_or_asked_of_stripe(
    db, billing, fake_stripe, settings_env, user_token, body, content_type, status
):
    settings_env(MAX_BODY_BYTES="2048")
    _, token = user_token()
    before = table_counts(db)

    response = billing.post(
        "/checkout", data=body, content_type=content_type, headers=bearer(token)
    )

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert table_counts(db) == before
    assert fake_stripe.requests == []


def test_when_stripe_fails_the_checkout_is_a_503_and_a_created_customer_is_kept(
    db, billing, fake_stripe, user_token
):
    _, token = user_token()
    fake_stripe.fail_next(500)  # the customer creation
    failed = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))
    assert failed.status_code == 503
    assert "Stripe could not create the customer" in failed.json["detail"]
    assert customers() == 0

    assert billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token)).status_code == 201
    fake_stripe.fail_next(503)  # the session, this time
    again = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))

    assert again.status_code == 503
    assert "Checkout Session" in again.json["detail"]
    assert customers() == 1
    assert len(fake_stripe.customers) == 1


def test_a_wrong_stripe_key_is_a_503_that_does_not_echo_the_key(
    db, billing, fake_stripe, settings_env, user_token
):
    settings_env(STRIPE_SECRET_KEY="sk_test_wrong_key_123")
    _, token = user_token()

    response = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))

    assert response.status_code == 503
    assert "sk_test_wrong_key_123" not in response.get_data(as_text=True)
    assert customers() == 0


def test_without_stripe_configured_checkout_is_a_503_naming_the_setting(
    db, billing, stripe_settings, user_token
):
    _, token = user_token()

    response = billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))

    assert response.status_code == 503
    assert "STRIPE_SECRET_KEY" in response.json["detail"]


def test_a_plan_without_a_configured_price_cannot_be_checked_out(
    db, billing, fake_stripe, settings_env, user_token
):
    settings_env(STRIPE_PRICE_TEAM=None)
    _, token = user_token()

    response = billing.post("/checkout", json={"plan": "team"}, headers=bearer(token))

    assert response.status_code == 503
    assert "STRIPE_PRICE_TEAM" in response.json["detail"]
    assert fake_stripe.requests == []


# Portal


def test_the_portal_needs_a_customer_and_then_opens_for_it(db, billing, fake_stripe, user_token):
    _, token = user_token()

    before = billing.post("/portal", headers=bearer(token))
    billing.post("/checkout", json={"plan": "pro"}, headers=bearer(token))
    after = billing.post("/portal", headers=bearer(token))

    assert before.status_code == 409
    assert after.status_code == 201
    assert after.json["url"].startswith("https://billing.stripe.com/")
    portal = fake_stripe.calls("POST", "/v1/billing_portal/sessions")[0]
    assert portal.params == {
        "customer": next(iter(fake_stripe.customers)),
        "return_url": "http://127.0.0.1:8080/",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/checkout"), ("POST", "/portal"), ("GET", "/subscription")],
)
@pytest.mark.parametrize("header", [None, "Bearer not.a.jwt", "Basic abc"])
def test_every_billing_route_refuses_a_missing_or_bad_token(db, billing, method, path, header):
    headers = {"Authorization": header} if header else {}

    response = billing.open(path, method=method, json={"plan": "pro"}, headers=headers)

    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_routes_and_wrong_methods_are_problems(db, billing, user_token):
    _, token = user_token()

    assert billing.get("/nope", headers=bearer(token)).status_code == 404
    wrong = billing.get("/checkout", headers=bearer(token))
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "POST"


# Plan and usage


def test_a_user_without_a_subscription_is_on_free_with_its_limits_and_zero_usage(
    db, billing, user_token
):
    _, token = user_token()

    body = billing.get("/subscription", headers=bearer(token)).json

    assert (body["plan"], body["status"], body["subscription_id"]) == ("free", "none", None)
    assert body["usage"]["tasks"] == {
        "used": 0,
        "limit": 100,
        "remaining": 100,
        "resets_at": body["period_end"],
    }
    assert body["usage"]["agents"]["limit"] == 10
    assert body["usage"]["agents"]["resets_at"] is None
    start = datetime.fromisoformat(body["period_start"])
    assert (start.day, start.hour, start.minute) == (1, 0, 0)
    assert body["models"] == ["*"]


def test_usage_counts_the_tasks_tokens_and_agents_of_the_subscription_period(
    db, billing, user_token
):
    user_id, token = user_token()
    now = datetime.now(UTC)
    add_subscription(
        user_id,
        plan="team",
        current_period_start=now - timedelta(days=2),
        current_period_end=now + timedelta(days=28),
    )
    with session_scope() as session:
        agent = Agent(owner_id=user_id, name="a")
        session.add(agent)
        session.flush()
        agent_id = agent.id
    for days_ago, tokens in ((1, 42), (5, 1000)):
        spend(user_id, agent_id, tokens=tokens, at=now - timedelta(days=days_ago))

    body = billing.get("/subscription", headers=bearer(token)).json

    assert (body["plan"], body["status"]) == ("team", "active")
    assert body["usage"]["tasks"]["used"] == 1  # the older task is in the previous period
    assert body["usage"]["tokens"]["used"] == 42
    assert body["usage"]["tokens"]["limit"] == 100_000_000
    assert body["usage"]["agents"]["used"] == 1
    period_end = datetime.fromisoformat(body["period_end"])
    assert abs(period_end - (now + timedelta(days=28))) < timedelta(seconds=1)


@pytest.mark.parametrize(
    ("status", "past_due_days", "plan"),
    [
        ("trialing", None, "pro"),
        ("past_due", 2, "pro"),
        ("past_due", 9, "free"),
        ("canceled", None, "free"),
        ("unpaid", None, "free"),
        ("incomplete", None, "free"),
    ],
)
def test_the_plan_follows_the_subscription_status_and_the_grace_period(
    db, billing, user_token, status, past_due_days, plan
):
    user_id, token = user_token()
    since = datetime.now(UTC) - timedelta(days=past_due_days) if past_due_days else None
    add_subscription(user_id, status=status, past_due_since=since)

    body = billing.get("/subscription", headers=bearer(token)).json

    assert (body["plan"], body["status"]) == (plan, status)
    if status == "past_due" and plan == "pro":
        grace = datetime.fromisoformat(body["grace_period_ends_at"])
        assert abs(grace - (since + timedelta(days=7))) < timedelta(seconds=1)
    else:
        assert body["grace_period_ends_at"] is None


def test_the_best_plan_wins_when_several_subscriptions_grant_one(db, billing, user_token):
    user_id, token = user_token()
    add_subscription(user_id, plan="pro")
    add_subscription(user_id, plan="team", version=0)
    add_subscription(user_id, plan="team", status="canceled", version=5)

    assert billing.get("/subscription", headers=bearer(token)).json["plan"] == "team"


def test_every_billing_and_webhook_operation_answers_as_documented(
    db, fake_stripe, sendgrid_signer, user_token
):
    """Each documented operation of billing, stripe_webhook and sendgrid_webhook answers at
    least once with success and once with an error, every answer checked against the spec."""
    billing, stripe_hook, sendgrid_hook = (
        validated_client(name, function_app(name).test_client())
        for name in ("billing", "stripe_webhook", "sendgrid_webhook")
    )
    _, token = user_token()
    me = bearer(token)

    assert billing.post("/portal", headers=me).status_code == 409
    assert billing.post("/checkout", json={"plan": "gold"}, headers=me).status_code == 400
    assert billing.post("/checkout", json={"plan": "pro"}, headers=me).status_code == 201
    assert billing.post("/portal", headers=me).status_code == 201
    assert billing.get("/subscription").status_code == 401
    assert billing.get("/subscription", headers=me).status_code == 200

    customer = next(iter(fake_stripe.customers))
    body = json.dumps(event("customer.subscription.created", subscription("sub_1", customer)))
    signed = {"Stripe-Signature": stripe_signature(body, STRIPE_WEBHOOK_SECRET)}
    assert (
        stripe_hook.post(
            "/", data=body, headers=signed, content_type="application/json"
        ).status_code
        == 200
    )
    assert (
        stripe_hook.post("/", data=body, headers={"Stripe-Signature": "t=1,v1=00"}).status_code
        == 400
    )
    assert billing.get("/subscription", headers=me).json["plan"] == "pro"

    batch = json.dumps([sendgrid_event("x@example.com", "bounce")]).encode()
    assert (
        sendgrid_hook.post("/", data=batch, headers=sendgrid_signer.headers(batch)).status_code
        == 200
    )
    assert (
        sendgrid_hook.post(
            "/", data=batch, headers={"Content-Type": "application/json"}
        ).status_code
        == 400
    )

    seen = billing.seen + stripe_hook.seen + sendgrid_hook.seen
    paths = [
        p
        for p in load_spec()["paths"]
        if p.split("/")[1] in {"billing", "stripe_webhook", "sendgrid_webhook"}
    ]
    assert len(paths) == 5
    for path in paths:
        for method in load_spec()["paths"][path]:
            statuses = {s for p, m, s in seen if p == path and m == method.upper()}
            assert any(s < 300 for s in statuses), f"{method} {path}: no success exercised"
            assert any(400 <= s < 500 for s in statuses), f"{method} {path}: no error exercised"
