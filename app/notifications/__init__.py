"""Notifications (SPEC 11): an outbox written with each causing change, fanned out into signed
webhook deliveries and customer emails, retried, never on the request path."""
