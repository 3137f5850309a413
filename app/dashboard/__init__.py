"""The customer dashboard: server-rendered pages under `/dashboard` (SPEC 9)."""
