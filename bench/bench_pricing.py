"""Micro-benchmark of the pricing hot path: resolve + price for 1,000,000 varied usage records
on one core. Run by hand: `python bench/bench_pricing.py [records]`.

Records vary the spelling (case, alias, suffix), the time (across two price versions) and the
usage (tokens, cached tokens, images). The resolve-only loop over the same records is printed
as the baseline measured in the same run. Target: ≥ 200,000 records per second.
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.pricing import Catalog, Usage, load_catalog, price  # noqa: E402

TARGET_PER_SECOND = 200_000
SHIPPED = ROOT / "pricing" / "camocopy-2025-01-01.toml"


def two_version_catalog(directory: Path) -> Catalog:
    """The shipped table plus a made-up later version, so resolution has to pick by time."""
    shutil.copy(SHIPPED, directory / SHIPPED.name)
    later = (
        SHIPPED.read_text()
        .replace("effective_from = 2025-01-01", "effective_from = 2026-01-01")
        .replace("input = 0.80", "input = 0.75")
    )
    (directory / "bench-2026-01-01.toml").write_text(later)
    return load_catalog(directory)


def spellings(catalog: Catalog, at: datetime) -> list[str]:
    names: list[str] = []
    for resolved in catalog.resolutions_at(at):
        names += [resolved.name, resolved.name.upper(), resolved.name.title()]
    for alias, _ in catalog.versions[0].aliases.items():
        names += [alias, f"{alias}-online", f"{alias.upper()}-DEEP"]
    return names


def records(catalog: Catalog, count: int) -> list[tuple[str, datetime, Usage]]:
    rng = random.Random(42)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    names = spellings(catalog, start)
    times = [start + timedelta(seconds=rng.randrange(2 * 365 * 86_400)) for _ in range(1_000)]
    usages = []
    for _ in range(20_000):
        prompt = rng.randrange(1, 100_000)
        usages.append(
            Usage(
                prompt_tokens=prompt,
                cached_tokens=rng.randrange(prompt),
                completion_tokens=rng.randrange(4_096),
                images_in=rng.choice((0, 0, 0, 1, 2)),
            )
        )
    return [(rng.choice(names), rng.choice(times), rng.choice(usages)) for _ in range(count)]


def bench(count: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        catalog = two_version_catalog(Path(directory))
    work = records(catalog, count)
    resolve = catalog.resolve

    began = time.perf_counter()
    for model, at, _ in work:
        resolve(model, at)
    resolve_seconds = time.perf_counter() - began

    began = time.perf_counter()
    for model, at, usage in work:
        price(resolve(model, at), usage)
    price_seconds = time.perf_counter() - began

    # As the gateway settles a request: the itemised lines built too (for the stored charge).
    began = time.perf_counter()
    for model, at, usage in work:
        price(resolve(model, at), usage).lines  # noqa: B018
    lines_seconds = time.perf_counter() - began

    # Sanity check outside the timed loops: the itemised breakdown adds up to the total.
    sample = [price(resolve(m, at), u) for m, at, u in work[:1_000]]
    assert all(c.total == sum((i.amount for i in c.lines), Decimal(0)) for c in sample)

    rate = count / price_seconds
    print(f"records:               {count:,}")
    print(f"resolve only:          {count / resolve_seconds:,.0f} records/s (baseline)")
    each = price_seconds * 1e6 / count
    print(f"resolve + price:       {rate:,.0f} records/s ({each:.2f} µs each)")
    print(f"  + itemised lines:    {count / lines_seconds:,.0f} records/s")
    verdict = "meets" if rate >= TARGET_PER_SECOND else "MISSES"
    print(f"target:                {TARGET_PER_SECOND:,} records/s — {verdict} it")


if __name__ == "__main__":
    bench(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
