"""Payments: Stripe Checkout top-ups, the Stripe webhook inbox, and auto-recharge of saved cards.

stripe webhook ──► inbox (unique event id) ──► purchase / refund ledger entry ──► derived tier
"""
