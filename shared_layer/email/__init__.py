"""Email: templates, SendGrid's Mail Send API, and its signed Event Webhook.

The database side lives in `shared_layer.services.email` (the outbox and sent history; its
`send_email` is what other code calls) and `shared_layer.services.email_events` (SendGrid's
events and the suppression list they fill).
"""
