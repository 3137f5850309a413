"""Usage queries (`POST /v1/usage/completions`), their rollups, and the scheduled jobs that keep
them (rollups, partition maintenance, reconciliation)."""
