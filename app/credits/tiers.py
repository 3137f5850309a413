"""Usage tiers from `pricing/tiers.toml`: pure lookup of an account's tier and the next one.

The tier is derived from the account's running totals on every read, never stored, so a
purchase raises the limits from the very next request in every instance.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

TierBasis = Literal["purchased", "spend"]


class TierConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    min_total: Decimal
    rpm: int
    tpm: int


@dataclass(frozen=True, slots=True)
class TierTable:
    basis: TierBasis
    tiers: tuple[Tier, ...]  # ascending by min_total, the first at 0

    def ranked_total(self, total_purchased: Decimal, total_usage: Decimal) -> Decimal:
        """What ranks an account: its purchased credit, or its spend (`basis = "spend"`)."""
        return total_purchased if self.basis == "purchased" else total_usage

    def tier_for(self, total_purchased: Decimal, total_usage: Decimal) -> Tier:
        total = self.ranked_total(total_purchased, total_usage)
        current = self.tiers[0]
        for tier in self.tiers[1:]:
            if total < tier.min_total:
                break
            current = tier
        return current

    def next_tier(self, tier: Tier) -> Tier | None:
        index = self.tiers.index(tier)
        return self.tiers[index + 1] if index + 1 < len(self.tiers) else None


def load_tiers(path: Path) -> TierTable:
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text(), parse_float=Decimal)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise TierConfigError(f"{where}: {exc}") from exc
    basis = raw.get("basis", "purchased")
    if basis not in ("purchased", "spend"):
        raise TierConfigError(f"{where}: basis: must be 'purchased' or 'spend', not {basis!r}")
    tiers: list[Tier] = []
    for i, entry in enumerate(raw.get("tier", [])):
        key = f"tier[{i}]"
        unknown = set(entry) - {"name", "min_total", "rpm", "tpm"}
        if unknown:
            raise TierConfigError(f"{where}: {key}: unknown keys {sorted(unknown)}")
        try:
            tier = Tier(
                name=str(entry["name"]),
                min_total=Decimal(str(entry["min_total"])),
                rpm=int(entry["rpm"]),
                tpm=int(entry["tpm"]),
            )
        except KeyError as exc:
            raise TierConfigError(f"{where}: {key}.{exc.args[0]}: missing") from exc
        except (InvalidOperation, ValueError, TypeError) as exc:
            raise TierConfigError(f"{where}: {key}: {exc}") from exc
        if tier.min_total < 0 or tier.rpm <= 0 or tier.tpm <= 0:
            raise TierConfigError(f"{where}: {key}: thresholds and limits must be positive")
        if tiers and tier.min_total <= tiers[-1].min_total:
            raise TierConfigError(f"{where}: {key}.min_total: tiers must ascend")
        tiers.append(tier)
    if not tiers or tiers[0].min_total != 0:
        raise TierConfigError(f"{where}: tier[0].min_total: the first tier must start at 0")
    return TierTable(basis=basis, tiers=tuple(tiers))
