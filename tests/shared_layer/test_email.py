"""Email: templates, the local outbox, SendGrid's v3 Mail Send API (the loopback fake), the
suppression list, failures, and the welcome email that registration sends."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from shared_layer.database import session_scope
from shared_layer.email.sendgrid import EmailRejected
from shared_layer.email.templates import TEMPLATES, format_money, render
from shared_layer.errors import UpstreamError
from shared_layer.models import EmailMessage, EmailSuppression, User
from shared_layer.services.email import EmailRequest, email_backend, send_email


def messages() -> list[EmailMessage]:
    with session_scope() as session:
        return list(session.scalars(select(EmailMessage).order_by(EmailMessage.created_at)))


# Templates


def test_every_template_renders_text_and_html_with_its_fields():
    for name, template in TEMPLATES.items():
        context = {field: f"<{field}>" for field in template.fields()}
        rendered = render(name, context)
        assert rendered.subject
        assert "$" not in rendered.subject
        assert "$" not in rendered.text
        assert "<!doctype html>" in rendered.html


def test_html_escapes_the_values_and_text_keeps_them():
    context = {"product": "Stratus", "name": "<script>x</script>", "email": "a@example.com"}

    rendered = render("welcome", context)

    assert "<script>x</script>" in rendered.text
    assert "&lt;script&gt;" in rendered.html
    assert "<script>" not in rendered.html


def test_rendering_without_a_field_names_it():
    with pytest.raises(KeyError, match="email"):
        render("welcome", {"product": "Stratus", "name": "Ann"})


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [
        (2000, "usd", "USD 20.00"),
        (5, "EUR", "EUR 0.05"),
        (500, "jpy", "JPY 500"),
        (-1250, "gbp", "GBP -12.50"),
    ],
)
def test_money_in_minor_units_is_formatted_per_currency(amount, currency, shown):
    assert format_money(amount, currency) == shown


# The local outbox (the default)


def test_without_sendgrid_an_email_goes_to_the_local_outbox_table_and_log(db, json_logs, caplog):
    caplog.set_level(logging.INFO, logger="shared_layer.services.email")
    assert email_backend() == "outbox"

    sent = send_email(EmailRequest("Ann@Example.com", "welcome"))

    assert sent.status == "outbox"
    [stored] = messages()
    assert (stored.to_email, stored.template, stored.backend) == (
        "ann@example.com",
        "welcome",
        "outbox",
    )
    assert stored.subject == "Welcome to Stratus"
    assert "Hello ann," in stored.body_text
    line = next(entry for entry in json_logs if entry.get("email_id") == str(stored.id))
    assert line["to"] == "ann@example.com"
    assert "Hello ann," in line["body"]


PHISHING = "Your account is locked: sign in at https://stratus-login.example.net now"


def _user(email: str, *, verified: bool) -> uuid.UUID:
    with session_scope() as session:
        user = User(
            email=email,
            password_hash="x",
            full_name=PHISHING,
            email_verified_at=datetime.now(UTC) if verified else None,
        )
        session.add(user)
        session.flush()
        return user.id


def test_an_unverified_address_gets_no_text_its_registrant_typed(db):
    """Anyone can register someone else's address, with a phishing text as the name: until
    the address is verified, the emails to it greet the address, not the name."""
    user_id = _user("victim@example.com", verified=False)

    send_email(EmailRequest("victim@example.com", "welcome", user_id=user_id))

    [stored] = messages()
    assert "https://" not in stored.body_text
    assert PHISHING not in stored.subject + stored.body_text
    assert "Hello victim," in stored.body_text


def test_a_verified_address_is_greeted_by_the_accounts_name(db):
    user_id = _user("owner@example.com", verified=True)

    send_email(EmailRequest("owner@example.com", "welcome", user_id=user_id))

    assert f"Hello {PHISHING}," in messages()[0].body_text  # their own name, for themselves


def test_callers_cannot_put_a_name_into_an_email(db):
    with pytest.raises(ValueError, match="addressee"):
        send_email(EmailRequest("ann@example.com", "welcome", {"name": "Ann"}))
    assert messages() == []


def test_email_backend_auto_picks_sendgrid_when_a_key_is_set(settings_env):
    settings_env(SENDGRID_API_KEY="SG.key")
    assert email_backend() == "sendgrid"
    settings_env(EMAIL_BACKEND="outbox")
    assert email_backend() == "outbox"


# SendGrid


def test_sendgrid_gets_the_documented_mail_send_request_and_its_message_id_is_kept(
    db, fake_sendgrid, settings_env
):
    settings_env(SENDGRID_FROM_EMAIL="hello@stratus.example", SENDGRID_FROM_NAME="Stratus Co")

    sent = send_email(EmailRequest("bob@example.com", "welcome"))

    assert sent.status == "sent"
    [mail] = fake_sendgrid.sent
    assert mail.headers["Authorization"] == "Bearer SG.test-key"
    assert mail.to == ["bob@example.com"]
    assert mail.body["from"] == {"email": "hello@stratus.example", "name": "Stratus Co"}
    assert mail.body["subject"] == "Welcome to Stratus Co"
    assert [c["type"] for c in mail.body["content"]] == ["text/plain", "text/html"]
    [stored] = messages()
    assert mail.body["custom_args"] == {"stratus_email_id": str(stored.id), "template": "welcome"}
    assert (stored.status, stored.provider_message_id) == ("sent", mail.message_id)
    assert stored.sent_at is not None


def test_a_suppressed_address_is_not_sent_to(db, fake_sendgrid):
    with session_scope() as session:
        session.add(EmailSuppression(email="gone@example.com", reason="bounce"))

    sent = send_email(EmailRequest("Gone@example.com", "welcome"))

    assert sent.status == "suppressed"
    assert fake_sendgrid.sent == []
    assert "bounce" in (messages()[0].error or "")


def test_a_transient_sendgrid_failure_is_retried(db, fake_sendgrid):
    fake_sendgrid.fail_next(500, times=2)

    sent = send_email(EmailRequest("c@example.com", "welcome"))

    assert sent.status == "sent"
    assert len(fake_sendgrid.sent) == 1


def test_sendgrid_down_raises_upstream_error_and_keeps_the_message_as_failed(db, fake_sendgrid):
    fake_sendgrid.fail_next(503, times=3)

    with pytest.raises(UpstreamError, match="503"):
        send_email(EmailRequest("c@example.com", "welcome"))

    [stored] = messages()
    assert stored.status == "failed"
    assert "503" in (stored.error or "")


def test_a_refused_key_is_permanent_and_not_retried(db, fake_sendgrid, settings_env):
    settings_env(SENDGRID_API_KEY="SG.wrong")

    with pytest.raises(EmailRejected, match="401"):
        send_email(EmailRequest("c@example.com", "welcome"))

    assert messages()[0].status == "failed"
    assert fake_sendgrid.sent == []


# The welcome email on registration


def test_registration_sends_a_welcome_email_to_the_outbox(db, client):
    response = client("auth").post(
        "/register",
        json={"email": "new@example.com", "password": "s3cret-pass-phrase-1", "full_name": "Nia"},
    )

    assert response.status_code == 201
    [stored] = messages()
    assert (stored.to_email, stored.template) == ("new@example.com", "welcome")
    assert str(stored.user_id) == response.json["id"]
    assert "Hello new," in stored.body_text  # not "Nia": the address is not verified yet
    assert "Nia" not in stored.body_text


def test_registration_succeeds_when_the_welcome_email_cannot_be_sent(db, client, fake_sendgrid):
    fake_sendgrid.fail_next(500, times=3)

    response = client("auth").post(
        "/register", json={"email": "new@example.com", "password": "s3cret-pass-phrase-1"}
    )

    assert response.status_code == 201
    with session_scope() as session:
        assert session.scalar(select(User.email)) == "new@example.com"
    assert messages()[0].status == "failed"
