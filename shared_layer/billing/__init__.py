"""Billing: plans and their limits, the Stripe API client, Stripe webhook signatures.

The database side (customers, subscriptions, events, quotas) lives in `shared_layer.services`:
`billing`, `stripe_events` and `quotas`. Nothing here imports `stripe` until it is used.
"""
