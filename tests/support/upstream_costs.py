"""An upstreams file whose upstream `costed` has cost tables (SPEC 13) and whose upstream
`plain` has none, both served by one fake upstream; and the exact cost the tables give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

COSTED_MODEL = "llama-3.1-8b"  # routed to `costed`
PLAIN_MODEL = "llama-3.3-70b"  # routed to `plain`
# FakeUpstream reports exactly this usage for a request with this `user`.
EXACT_USAGE_USER = "behaviour:usage:13:7"
PROMPT, COMPLETION = 13, 7

# An old version that must no longer apply, and the one in force since yesterday.
OLD_TABLE = """
currency = "EUR"
effective_from = 2025-01-01

[models."llama-3.1-8b"]
owned_by = "meta"
input = 0.50
output = 0.50
"""
CURRENT_TABLE = """
currency = "EUR"
effective_from = {day}

[models."llama-3-1-8b-upstream"]
owned_by = "meta"
input = 0.05
output = 0.07

[aliases]
"llama-3.1-8b" = "llama-3-1-8b-upstream"
"""
# 13 × 0.05 / 10⁶ + 7 × 0.07 / 10⁶
COST_PER_REQUEST = Decimal("0.00000114")


def costed_upstreams(directory: Path, url: str) -> Path:
    """The upstreams file in `directory`, its cost tables in `directory/costs/costed`."""
    tables = directory / "costs" / "costed"
    tables.mkdir(parents=True)
    (tables / "old.toml").write_text(OLD_TABLE)
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date()
    (tables / "current.toml").write_text(CURRENT_TABLE.format(day=yesterday.isoformat()))
    path = directory / "upstreams.toml"
    path.write_text(
        f"""
[upstreams.costed]
base_url = "{url}"
costs = "costs/costed"

[upstreams.plain]
base_url = "{url}"

[routes]
"{COSTED_MODEL}" = "costed"
"{PLAIN_MODEL}" = "plain"
"""
    )
    return path
