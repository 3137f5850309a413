"""Accounts and their API keys; customer authentication."""
