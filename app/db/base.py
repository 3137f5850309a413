"""Declarative base, shared column types and the naming convention Alembic relies on."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from sqlalchemy import MetaData, Numeric
from sqlalchemy.orm import DeclarativeBase, mapped_column

# Exact to 12 decimal places: per-million prices have at most 6 decimals (the pricing loader
# enforces it), so a token count times a per-token price is always exact at this scale.
MONEY = Numeric(38, 12)
Money = Annotated[Decimal, mapped_column(MONEY)]


def without_nul(text: str) -> str:
    """`text` as Postgres can store it: JSON allows NUL ("\\u0000"), Postgres text does not.
    For values kept as given otherwise (a request's `user`, and the filters that match it)."""
    return text.replace("\x00", "")


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def include_in_autogenerate(name: str | None, type_: str, parent_names: object) -> bool:
    """Monthly partitions (`usage_events_2026_11`) are made at run time, not by models."""
    return not (type_ == "table" and name is not None and name.startswith("usage_events_"))
