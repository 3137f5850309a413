"""Pricing fixtures: the shipped catalog, the test-fixture catalog, and a writer of temporary
rate-table directories. Pure: no database, no network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.pricing import Catalog, load_catalog

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIR = ROOT / "pricing"
FIXTURE_DIR = ROOT / "tests" / "fixtures" / "pricing"

WriteTables = Callable[..., Path]


@pytest.fixture(scope="session")
def shipped() -> Catalog:
    return load_catalog(SHIPPED_DIR)


@pytest.fixture(scope="session")
def fixture_catalog() -> Catalog:
    return load_catalog(FIXTURE_DIR)


def write_tables(directory: Path, **files: str) -> Path:
    """Write `name="toml text"` pairs as `name.toml` files into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.toml").write_text(text, encoding="utf-8")
    return directory


@pytest.fixture
def tables(tmp_path: Path) -> WriteTables:
    """`tables(v1="...", v2="...")` → a fresh directory holding those rate tables."""

    def write(**files: str) -> Path:
        return write_tables(tmp_path / "pricing", **files)

    return write
