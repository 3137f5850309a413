"""Per-account RPM/TPM limits of the account's tier, in process or shared through Redis."""
