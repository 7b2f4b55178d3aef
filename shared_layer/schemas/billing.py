"""Bodies of the billing, stripe_webhook and sendgrid_webhook functions.

Webhook payloads are validated only as far as Stratus reads them (`extra="allow"`): Stripe and
SendGrid add fields over time, and an added field must not turn a genuine event into a 400.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
)
from pydantic_core import PydanticCustomError

from shared_layer.schemas.common import StorableJson, StrictBody, Text, UnixSeconds

PaidPlanName = Literal["pro", "team"]
PlanName = Literal["free", "pro", "team"]


class CheckoutCreate(StrictBody):
    plan: PaidPlanName


class CheckoutSessionPublic(BaseModel):
    id: str
    url: str
    plan: PaidPlanName


class PortalSessionPublic(BaseModel):
    url: str


class LimitUsage(BaseModel):
    used: int
    limit: int
    remaining: int
    resets_at: datetime | None  # None: not a per-period limit (agents)

    @classmethod
    def of(cls, used: int, limit: int, resets_at: datetime | None) -> LimitUsage:
        return cls(used=used, limit=limit, remaining=max(0, limit - used), resets_at=resets_at)


class PlanUsage(BaseModel):
    tasks: LimitUsage
    tokens: LimitUsage
    agents: LimitUsage


class SubscriptionPublic(BaseModel):
    plan: PlanName
    status: str  # Stripe's subscription status, or "none"
    subscription_id: str | None
    current_period_end: datetime | None
    cancel_at_period_end: bool
    grace_period_ends_at: datetime | None
    period_start: datetime
    period_end: datetime
    models: list[str]
    usage: PlanUsage


class StripeEventData(BaseModel):
    model_config = ConfigDict(extra="allow")

    object: dict[str, Any]


class StripeEventIn(BaseModel):
    """A Stripe event (snapshot payload), as far as the webhook reads it. What it stores of
    `data.object` is checked where it is read (`services.stripe_changes`); the event is stored
    whole as the JSON it came as (`billing.webhook`)."""

    model_config = ConfigDict(extra="allow")

    id: Text = Field(min_length=1, max_length=255)
    object: Literal["event"]
    type: Text = Field(min_length=1, max_length=100)
    created: UnixSeconds
    livemode: StrictBool = False
    data: StripeEventData


class StripeWebhookReceipt(BaseModel):
    received: bool = True
    event_id: str
    duplicate: bool
    outcome: str  # applied | stale | ignored | unmatched | duplicate


def _fits_lower_cased(email: str) -> str:
    # Stored trimmed and lower-cased (services.email_events), which may lengthen it: "İ" is two.
    if len(email.strip().lower()) > EMAIL_MAX_LENGTH:
        raise PydanticCustomError(
            "string_too_long",
            "is longer than {max_length} characters once lower-cased, as it is stored",
            {"max_length": EMAIL_MAX_LENGTH},
        )
    return email


EMAIL_MAX_LENGTH = 320
SendGridEmail = Annotated[
    Text, Field(min_length=1, max_length=EMAIL_MAX_LENGTH), AfterValidator(_fits_lower_cased)
]


class SendGridEventIn(BaseModel):
    """One event of a SendGrid Event Webhook batch, as far as Stratus reads it: what is stored
    as text holds no NUL and fits its column; any other field, kept in the event's JSON
    payload, holds no number JSON cannot write."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, StorableJson] = Field(init=False)

    email: SendGridEmail
    event: Text = Field(min_length=1, max_length=32)
    sg_event_id: Text = Field(min_length=1, max_length=255)
    timestamp: UnixSeconds
    sg_message_id: Text | None = Field(None, max_length=255)
    reason: Text | None = None
    response: Text | None = None  # stored as the reason when there is none


SendGridBatch = TypeAdapter(list[SendGridEventIn])


class SendGridWebhookReceipt(BaseModel):
    received: int
    stored: int
    duplicates: int
    suppressed: int
