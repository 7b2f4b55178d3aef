"""The transactional emails Stratus sends, as plain text and HTML rendered from one template.

Each template names the fields it needs; rendering without one of them is a bug, so it raises
`KeyError` naming it. Values are HTML-escaped in the HTML part. Money arrives in minor units
(cents) with its currency and is formatted here, once.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from string import Template

__all__ = ["TEMPLATES", "EmailTemplate", "RenderedEmail", "format_money", "render"]

# Stripe's zero-decimal currencies: an amount of 500 JPY is 500 yen, not 5.00.
_ZERO_DECIMAL = frozenset(
    {"bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga"}
    | {"pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"}
)


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


@dataclass(frozen=True)
class EmailTemplate:
    subject: str
    text: str  # `$field` placeholders (string.Template); paragraphs split on blank lines

    def fields(self) -> set[str]:
        names: set[str] = set()
        for source in (self.subject, self.text):
            names |= {
                m.group("named") or m.group("braced")
                for m in Template.pattern.finditer(source)
                if m.group("named") or m.group("braced")
            }
        return names


TEMPLATES: dict[str, EmailTemplate] = {
    "welcome": EmailTemplate(
        "Welcome to $product",
        "Hello $name,\n\nyour $product account for $email is ready. Create an agent, give it a "
        "task, and read its answer when it is done.\n\nThe $product team",
    ),
    "email_verification": EmailTemplate(
        "Confirm your email address",
        "Hello $name,\n\nconfirm that $email is yours by opening this link:\n$link\n\n"
        "It expires in $expires_in. If you did not sign up for $product, ignore this email.",
    ),
    "password_reset": EmailTemplate(
        "Reset your $product password",
        "Hello $name,\n\nsomeone asked to reset the password of $email. To choose a new one, "
        "open this link:\n$link\n\nIt expires in $expires_in. If it was not you, ignore this "
        "email: your password stays as it is.",
    ),
    "payment_failed": EmailTemplate(
        "Your $product payment did not go through",
        "Hello $name,\n\nwe could not collect $amount for your $plan plan. Please update your "
        "payment method:\n$link\n\nYour plan stays active for $grace_days days while we retry.",
    ),
    "subscription_changed": EmailTemplate(
        "Your $product plan is now $plan",
        "Hello $name,\n\nyour subscription is $status and your plan is now $plan.\n\n"
        "The $product team",
    ),
}


def format_money(amount_minor: int, currency: str) -> str:
    """`2000, "usd"` -> `USD 20.00`; zero-decimal currencies have no decimals."""
    code = currency.lower()
    if code in _ZERO_DECIMAL:
        return f"{code.upper()} {amount_minor:,}"
    units, cents = divmod(abs(amount_minor), 100)
    sign = "-" if amount_minor < 0 else ""
    return f"{code.upper()} {sign}{units:,}.{cents:02d}"


def render(name: str, context: Mapping[str, str]) -> RenderedEmail:
    """The email `name` with `context` filled in; `KeyError` for an unknown template or a
    missing field."""
    template = TEMPLATES[name]
    missing = template.fields() - set(context)
    if missing:
        raise KeyError(f"template {name!r} needs {', '.join(sorted(missing))}")
    values = {k: str(v) for k, v in context.items()}
    subject = Template(template.subject).substitute(values)
    text = Template(template.text).substitute(values)
    escaped = {k: html.escape(v) for k, v in values.items()}
    paragraphs = Template(template.text).substitute(escaped).split("\n\n")
    body = "".join("<p>" + p.replace("\n", "<br>\n") + "</p>\n" for p in paragraphs)
    return RenderedEmail(subject, text, f"<!doctype html>\n<html><body>\n{body}</body></html>\n")
