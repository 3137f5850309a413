"""The admin API of SPEC section 5 (Bearer TOLLGATE_ADMIN_TOKEN)."""
