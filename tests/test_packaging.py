"""A wheel install, not only the editable one: `tollgate` finds its rate tables and migrations
from the installed package, whatever the working directory (SPEC 2)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import asyncpg
import pytest

from tests.support import database

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the project's wheel installed (no dependencies: those are borrowed
    from the test environment's site-packages, which holds no `app` of its own)."""
    base = tmp_path_factory.mktemp("wheel")
    run = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*run, "wheel", "--no-deps", str(ROOT), "-w", str(base)], check=True)
    [wheel] = base.glob("tollgate-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*run, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    site_packages = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site_packages) / "borrowed.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return venv


def _run(venv: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DATABASE_URL")}
    return subprocess.run(
        [str(venv / "bin" / "tollgate"), *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_finds_its_rate_tables_and_migrations(wheel_venv: Path, tmp_path: Path) -> None:
    probe = subprocess.run(
        [
            str(wheel_venv / "bin" / "python"),
            "-c",
            "import app, app.config as c; print(app.__file__); "
            "print(c.DEFAULT_PRICING_DIR); print(c.MIGRATIONS_DIR)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    package, pricing, migrations = probe.stdout.split()
    assert package.startswith(str(wheel_venv))  # the wheel's copy, not the checkout
    assert Path(pricing) == wheel_venv / "share" / "tollgate" / "pricing"
    assert Path(migrations) == wheel_venv / "share" / "tollgate" / "migrations"

    checked = _run(wheel_venv, "pricing", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "llama-3.3-70b" in checked.stdout


async def test_the_wheel_migrates_a_database(
    wheel_venv: Path, tmp_path: Path, pg_server: str
) -> None:
    url = await database.create_database(pg_server)
    try:
        migrated = _run(wheel_venv, "migrate", cwd=tmp_path, DATABASE_URL=url)
        assert migrated.returncode == 0, migrated.stderr
        connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            version = await connection.fetchval("SELECT version_num FROM alembic_version")
        finally:
            await connection.close()
        newest = sorted((ROOT / "migrations" / "versions").glob("*.py"))[-1].name
        assert newest.startswith(version)
    finally:
        await database.drop_database(pg_server, url)
