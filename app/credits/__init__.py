"""Prepaid credit: the ledger, balances, holds and tiers."""
