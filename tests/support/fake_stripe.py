"""A loopback server answering Stripe's REST API, for the real `stripe` client to call, and
builders of signed Stripe webhook events.

It answers the calls Stratus makes — `POST /v1/customers`, `GET /v1/customers/{id}`,
`POST /v1/checkout/sessions`, `POST /v1/billing_portal/sessions` — with Stripe's JSON shapes,
reading the form-encoded bodies (`metadata[user_id]=...`, `line_items[0][price]=...`) the
library sends. Like Stripe it checks the secret key (401), refuses unknown customers and prices
(400 `resource_missing`), and honours `Idempotency-Key`: the same key with the same parameters
replays the first answer, also for requests racing each other; with other parameters it is a
400 `idempotency_error`. It can be told to fail the next N calls with a status.

    with FakeStripeServer(api_key="sk_test_x", prices={"price_pro"}) as stripe:
        settings_env(STRIPE_SECRET_KEY="sk_test_x", STRIPE_API_BASE=stripe.base_url)

`stripe_signature(payload, secret, timestamp=...)` computes a `Stripe-Signature` header by hand
(HMAC-SHA256 over "t.payload"), independently of the library under test.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tests.support.loopback import LoopbackHandler, LoopbackHTTPServer, LoopbackServer


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    params: dict[str, Any]


def parse_form(body: str) -> dict[str, Any]:
    """Stripe's form encoding as nested data: `a[b][0][c]=1` -> {"a": {"b": [{"c": "1"}]}}."""
    root: dict[str, Any] = {}
    for key, value in urllib.parse.parse_qsl(body, keep_blank_values=True):
        parts = [key.split("[", 1)[0]] + [p.rstrip("]") for p in key.split("[")[1:]]
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    converted = {k: _lists(v) for k, v in node.items()}
    if converted and all(k.isdigit() for k in converted):
        return [converted[k] for k in sorted(converted, key=int)]
    return converted


def stripe_signature(
    payload: str | bytes,
    secret: str,
    *,
    timestamp: int | None = None,
    extra_v1: tuple[str, ...] = (),
    scheme: str = "v1",
) -> str:
    """`t=...,v1=...` as Stripe sends it; `extra_v1` adds more v1 values (secret rotation)."""
    text = payload.decode() if isinstance(payload, bytes) else payload
    stamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{stamp}.{text}".encode(), hashlib.sha256).hexdigest()
    parts = [f"t={stamp}", *(f"v1={value}" for value in extra_v1), f"{scheme}={digest}"]
    return ",".join(parts)


def event(
    type: str,
    obj: dict[str, Any],
    *,
    created: int | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """A Stripe event (snapshot payload) wrapping `obj`."""
    return {
        "id": event_id or "evt_" + secrets.token_hex(12),
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": int(time.time()) if created is None else created,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
        "data": {"object": obj},
    }


def subscription(
    sub_id: str,
    customer: str,
    *,
    status: str = "active",
    price: str = "price_pro",
    period_start: int = 1_700_000_000,
    period_end: int = 1_702_592_000,
    cancel_at_period_end: bool = False,
    metadata: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A subscription object as API version 2025-03-31 sends it (period on the item)."""
    return {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "status": status,
        "cancel_at_period_end": cancel_at_period_end,
        "canceled_at": period_start if status == "canceled" else None,
        "created": period_start,
        "metadata": metadata or {},
        "items": {
            "object": "list",
            "data": [
                {
                    "id": "si_" + sub_id.removeprefix("sub_"),
                    "object": "subscription_item",
                    "price": {"id": price, "object": "price", "currency": "usd"},
                    "quantity": 1,
                    "current_period_start": period_start,
                    "current_period_end": period_end,
                }
            ],
        },
    }


def invoice(
    invoice_id: str,
    customer: str,
    *,
    subscription_id: str | None = None,
    amount_due: int = 2000,
    amount_paid: int = 0,
    currency: str = "usd",
    status: str = "open",
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer,
        "status": status,
        "currency": currency,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "attempt_count": 1,
        "hosted_invoice_url": f"https://invoice.stripe.com/i/{invoice_id}",
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": subscription_id, "metadata": {}},
        },
    }


class _Handler(LoopbackHandler):
    server: LoopbackHTTPServer[FakeStripeServer]

    def do_GET(self) -> None:
        self._handle("GET", {})

    def do_POST(self) -> None:
        self._handle("POST", parse_form(self.read_body().decode()))

    def _handle(self, method: str, params: dict[str, Any]) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0].rstrip("/")
        fake._record(RecordedRequest(method, path, dict(self.headers.items()), params))
        if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._error(401, "invalid_request_error", "Invalid API Key provided.")
            return
        status = fake._take_failure()
        if status is not None:
            self._error(status, "api_error", f"Simulated failure with status {status}.")
            return
        key = self.headers.get("Idempotency-Key") if method == "POST" else None
        if key:
            with fake._key_lock(key):  # a racing request with the same key waits, then replays
                stored = fake._idempotent.get(key)
                if stored is None:
                    answer = self._route(method, path, params)
                    fake._idempotent[key] = (path, params, answer)
                elif stored[:2] != (path, params):
                    answer = (
                        400,
                        _error_body(
                            "idempotency_error",
                            "Keys for idempotent "
                            "requests can only be used with the same parameters.",
                        ),
                    )
                else:
                    answer = stored[2]
        else:
            answer = self._route(method, path, params)
        self._send(*answer)

    def _route(self, method: str, path: str, params: dict[str, Any]) -> tuple[int, Any]:
        fake = self.server.fake
        if method == "POST" and path == "/v1/customers":
            customer = {
                "id": "cus_" + secrets.token_hex(7),
                "object": "customer",
                "created": int(time.time()),
                "email": params.get("email"),
                "metadata": params.get("metadata", {}),
                "livemode": False,
            }
            with fake._lock:
                fake.customers[customer["id"]] = customer
            return 200, customer
        if method == "GET" and path.startswith("/v1/customers/"):
            found = fake.customers.get(path.rsplit("/", 1)[1])
            if found is None:
                return 404, _error_body("invalid_request_error", "No such customer", "id")
            return 200, found
        if method == "POST" and path == "/v1/checkout/sessions":
            return self._checkout(params)
        if method == "POST" and path == "/v1/billing_portal/sessions":
            customer = params.get("customer")
            if customer not in fake.customers:
                return 400, _error_body(
                    "invalid_request_error", f"No such customer: '{customer}'", "customer"
                )
            session_id = "bps_" + secrets.token_hex(12)
            return 200, {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": customer,
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/test_{session_id}",
                "livemode": False,
            }
        return 404, _error_body("invalid_request_error", f"Unrecognized request URL ({path})")

    def _checkout(self, params: dict[str, Any]) -> tuple[int, Any]:
        fake = self.server.fake
        customer = params.get("customer")
        if customer not in fake.customers:
            return 400, _error_body(
                "invalid_request_error", f"No such customer: '{customer}'", "customer"
            )
        items = params.get("line_items") or []
        for index, item in enumerate(items):
            if item.get("price") not in fake.prices:
                return 400, _error_body(
                    "invalid_request_error",
                    f"No such price: '{item.get('price')}'",
                    f"line_items[{index}][price]",
                )
        if params.get("mode") != "subscription" or not items:
            return 400, _error_body("invalid_request_error", "Missing mode or line_items")
        session_id = "cs_test_" + secrets.token_hex(16)
        session = {
            "id": session_id,
            "object": "checkout.session",
            "customer": customer,
            "client_reference_id": params.get("client_reference_id"),
            "mode": "subscription",
            "status": "open",
            "metadata": params.get("metadata", {}),
            "success_url": params.get("success_url"),
            "cancel_url": params.get("cancel_url"),
            "subscription": None,
            "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            "livemode": False,
        }
        with fake._lock:
            fake.checkout_sessions.append(session)
        return 200, session

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, _error_body(kind, message))

    def _send(self, status: int, body: Any) -> None:
        self.send_json(status, body, {"Request-Id": "req_" + secrets.token_hex(7)})


def _error_body(kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    code = "resource_missing" if message.startswith("No such") else None
    return {"error": {"type": kind, "message": message, "param": param, "code": code}}


@dataclass
class FakeStripeServer(LoopbackServer[RecordedRequest]):
    """The fake, on a free loopback port while the `with` block runs."""

    handler = _Handler

    api_key: str = "sk_test_fake"
    prices: set[str] = field(default_factory=lambda: {"price_pro", "price_team"})
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    checkout_sessions: list[dict[str, Any]] = field(default_factory=list)
    _idempotent: dict[str, tuple[str, dict[str, Any], tuple[int, Any]]] = field(
        default_factory=dict
    )
    _key_locks: dict[str, threading.Lock] = field(default_factory=dict)

    def calls(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and r.path == path]

    def _key_lock(self, key: str) -> threading.Lock:
        with self._lock:
            return self._key_locks.setdefault(key, threading.Lock())
