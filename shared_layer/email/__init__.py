"""Email: templates, SendGrid's Mail Send API, and its signed Event Webhook.

The database side (the outbox and sent history, SendGrid events, the suppression list) lives in
`shared_layer.services.email`, whose `send_email` is what other code calls.
"""
