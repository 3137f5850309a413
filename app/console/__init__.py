"""The operator console (SPEC 12): accounts, ledger, credit, invoices, jobs, webhooks and the
audit log in a browser, for operators with roles."""
