"""Email: templates, the local outbox, SendGrid's v3 Mail Send API (the loopback fake), the
suppression list, failures, and the welcome email that registration sends."""

from __future__ import annotations

import logging

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

    sent = send_email(EmailRequest("Ann@Example.com", "welcome", {"name": "Ann"}))

    assert sent.status == "outbox"
    [stored] = messages()
    assert (stored.to_email, stored.template, stored.backend) == (
        "ann@example.com",
        "welcome",
        "outbox",
    )
    assert stored.subject == "Welcome to Stratus"
    assert "Hello Ann," in stored.body_text
    line = next(entry for entry in json_logs if entry.get("email_id") == str(stored.id))
    assert line["to"] == "ann@example.com"
    assert "Hello Ann," in line["body"]


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

    sent = send_email(EmailRequest("bob@example.com", "welcome", {"name": "Bob"}))

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
        json={"email": "new@example.com", "password": "s3cret-pass-1", "full_name": "Nia"},
    )

    assert response.status_code == 201
    [stored] = messages()
    assert (stored.to_email, stored.template) == ("new@example.com", "welcome")
    assert str(stored.user_id) == response.json["id"]
    assert "Hello Nia," in stored.body_text


def test_registration_succeeds_when_the_welcome_email_cannot_be_sent(db, client, fake_sendgrid):
    fake_sendgrid.fail_next(500, times=3)

    response = client("auth").post(
        "/register", json={"email": "new@example.com", "password": "s3cret-pass-1"}
    )

    assert response.status_code == 201
    with session_scope() as session:
        assert session.scalar(select(User.email)) == "new@example.com"
    assert messages()[0].status == "failed"
