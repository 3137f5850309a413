"""The keys page's pure parts: a form's fields to the API's `KeyFields`, the expiry input, a
limit's bar, the reset time, and who may hold a session."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from msgspec import UNSET

from app.credits.limits import LimitPeriod, SpendLimit
from app.dashboard.format import in_zone, input_time
from app.dashboard.repository import SessionKey
from app.dashboard.service import KeyForm, KeyRow, key_fields, parse_expiry
from app.dashboard.session import refusal
from app.db.models import ApiKey
from app.errors import InvalidRequest

NOW = datetime(2026, 5, 7, 14, 3, tzinfo=UTC)


def test_a_create_form_becomes_the_apis_fields() -> None:
    form = KeyForm(
        name="  batch   jobs ",
        scope="inference",
        limit_amount=" €5 ",
        limit_period="day",
        limit_timezone="Europe/Paris",
        models=("llama-3.1-8b",),
        expires_at="2026-06-01T18:30",
    )
    fields = key_fields(form, NOW, creating=True)
    assert fields.name == "batch jobs"
    assert fields.scope == "inference"
    assert fields.spend_limit == {"amount": "5", "period": "day", "timezone": "Europe/Paris"}
    assert fields.allowed_models == ["llama-3.1-8b"]
    assert fields.expires_at == "2026-06-01T18:30:00Z"


def test_a_change_form_sets_limit_models_and_expiry_and_keeps_name_and_scope() -> None:
    fields = key_fields(KeyForm(name="ignored", limit_timezone=" "), NOW, creating=False)
    assert fields.name is UNSET
    assert fields.scope is UNSET
    # Blank fields clear: no limit, every model, never expires.
    assert fields.spend_limit is None
    assert fields.allowed_models is None
    assert fields.expires_at is None
    with_limit = key_fields(KeyForm(limit_amount="3", limit_timezone=" "), NOW, creating=False)
    assert with_limit.spend_limit == {"amount": "3", "period": "day", "timezone": "UTC"}


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("", None),
        ("2026-05-08T09:00", datetime(2026, 5, 8, 9, 0, tzinfo=UTC)),  # read as UTC
        ("2026-05-08T09:00:30", datetime(2026, 5, 8, 9, 0, 30, tzinfo=UTC)),
        ("2026-05-08", datetime(2026, 5, 8, tzinfo=UTC)),  # a browser without the picker
        ("2026-05-08T11:00+02:00", datetime(2026, 5, 8, 9, 0, tzinfo=UTC)),
    ],
)
def test_expiry_input(typed: str, expected: datetime | None) -> None:
    assert parse_expiry(typed, NOW) == expected


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("next tuesday", "such as 2027-01-31 18:00"),
        ("2026-05-07T14:03", "in the future"),
        ("2020-01-01T00:00", "in the future"),
    ],
)
def test_an_expiry_that_is_not_a_future_time_is_refused(typed: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_expiry(typed, NOW)


def test_a_name_too_long_or_with_nul_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="at most 100"):
        key_fields(KeyForm(name="x" * 101), NOW, creating=True)
    with pytest.raises(InvalidRequest, match="NUL"):
        key_fields(KeyForm(name="a\x00b"), NOW, creating=True)


def test_input_time_round_trips_and_keeps_seconds_only_when_set() -> None:
    assert input_time(None) == ""
    assert input_time(datetime(2027, 1, 31, 18, 0, tzinfo=UTC)) == "2027-01-31T18:00"
    assert input_time(datetime(2027, 1, 31, 18, 0, 5, tzinfo=UTC)) == "2027-01-31T18:00:05"
    moment = datetime(2027, 1, 31, 18, 0, 5, tzinfo=UTC)
    assert parse_expiry(input_time(moment), NOW) == moment


def test_reset_time_reads_in_the_limits_zone() -> None:
    midnight_paris = datetime(2026, 5, 7, 22, 0, tzinfo=UTC)
    assert in_zone(midnight_paris, "Europe/Paris") == "8 May 00:00 CEST"
    assert in_zone(datetime(2026, 6, 1, tzinfo=UTC), "UTC") == "1 Jun 00:00 UTC"


def _row(amount: str | None, spent: str) -> KeyRow:
    limit = None if amount is None else SpendLimit(Decimal(amount), LimitPeriod.DAY, "UTC")
    key = ApiKey(id=None, name=None, prefix="tg-abcdefgh", scope="full")
    return KeyRow(key, None, False, limit, Decimal(spent), None, False, KeyForm())


@pytest.mark.parametrize(
    ("amount", "spent", "percent", "over"),
    [
        ("10", "0", "0.0", False),
        ("10", "3.125", "31.3", False),
        ("10", "0.0001", "0.0", False),
        ("10", "10", "100.0", True),
        ("10", "10.40", "100.0", True),  # overshot by requests in flight: a full bar
        ("0", "0", "100.0", True),  # a zero limit allows nothing
        (None, "5", "0", False),
    ],
)
def test_the_limit_bar(amount: str | None, spent: str, percent: str, over: bool) -> None:
    row = _row(amount, spent)
    assert str(row.used_percent) == percent
    assert row.over is over


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (None, "was revoked"),
        (SessionKey("Acme", "EUR", True, "full", None), "was revoked"),
        (SessionKey("Acme", "EUR", False, "full", NOW), "expired at 2026-05-07 14:03 UTC"),
        (
            SessionKey("Acme", "EUR", False, "inference", None),
            "has scope inference: it works for the API only",
        ),
        (SessionKey("Acme", "EUR", False, "full", NOW + timedelta(seconds=1)), None),
        (SessionKey("Acme", "EUR", False, "full", None), None),
    ],
)
def test_only_an_active_full_key_holds_a_session(
    key: SessionKey | None, reason: str | None
) -> None:
    assert refusal(key, NOW) == reason
