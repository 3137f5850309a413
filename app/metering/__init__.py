"""Usage events: the batched writer that commits each event with its deduction, and ingestion."""
