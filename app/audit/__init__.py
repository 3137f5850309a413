"""The audit log (SPEC 12): who changed what, written in the transaction of the change."""
