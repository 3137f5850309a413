"""The usage query's request (SPEC 3.3), validated field by field so that every 400 names the
field at fault, and the shape of its response rows."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import msgspec

from app.db.base import without_nul
from app.errors import InvalidJson, InvalidRequest
from app.usage.windows import (
    MAX_WINDOWS,
    TooManyWindows,
    WindowSize,
    parse_rfc3339,
    window_bounds,
)

GROUP_FIELDS = ("model", "api_key_id", "user", "endpoint")
ADMIN_GROUP_FIELDS = (*GROUP_FIELDS, "user_id")  # user_id: the account
_ID_FIELDS = frozenset({"api_key_id", "user_id"})
_BODY_FIELDS = (
    "start_time",
    "end_time",
    "window_size",
    "window_timezone",
    "group_by",
    "filter_group_by",
)
# Far enough to hold any real usage, near enough that local-time arithmetic never overflows.
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)

FilterValue = str | uuid.UUID | None


@dataclass(frozen=True, slots=True)
class UsageQuery:
    start: datetime
    end: datetime
    window_size: WindowSize
    zone: tzinfo
    bounds: tuple[datetime, ...]  # window i is [bounds[i], bounds[i+1])
    group_by: tuple[str, ...]
    filters: Mapping[str, tuple[FilterValue, ...]]


def parse_usage_query(body: bytes, *, fields: tuple[str, ...], now: datetime) -> UsageQuery:
    """Validate a request body; `fields` are the group-by/filter fields allowed here."""
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise InvalidJson() from None
    except RecursionError:
        raise InvalidJson(too_deep=True) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The body must be a JSON object.", code="invalid_type")
    for name in raw:
        if name not in _BODY_FIELDS:
            raise InvalidRequest(
                f"Unrecognized request field: {name}. Allowed: {', '.join(_BODY_FIELDS)}.",
                param=name,
                code="unknown_field",
            )
    if raw.get("start_time") is None:
        raise InvalidRequest(
            "Missing required field: start_time", param="start_time", code="missing_field"
        )
    start = _time(raw, "start_time")
    # Rounded up to the whole second, so that everything recorded so far is counted.
    end = _time(raw, "end_time") if raw.get("end_time") is not None else _ceil_second(now)
    if end <= start:
        raise InvalidRequest(
            "end_time must be after start_time"
            + ("" if raw.get("end_time") is not None else " (end_time defaults to now)"),
            param="end_time",
            code="invalid_range",
        )
    size = _window_size(raw.get("window_size"))
    zone = _zone(raw.get("window_timezone"))
    try:
        bounds = window_bounds(start, end, size, zone)
    except TooManyWindows:
        raise InvalidRequest(
            f"The range from start_time to end_time spans more than {MAX_WINDOWS:,} "
            f"{size.value} windows. Use a larger window_size or a shorter range.",
            param="window_size",
            code="too_many_windows",
        ) from None
    return UsageQuery(
        start=start,
        end=end,
        window_size=size,
        zone=zone,
        bounds=tuple(bounds),
        group_by=_group_by(raw.get("group_by"), fields),
        filters=_filters(raw.get("filter_group_by"), fields),
    )


def _time(raw: dict[str, Any], name: str) -> datetime:
    value = raw[name]
    if not isinstance(value, str):
        raise InvalidRequest(
            f"{name} must be a string (an RFC 3339 date-time)", param=name, code="invalid_type"
        )
    try:
        parsed = parse_rfc3339(value)
    except ValueError as exc:
        raise InvalidRequest(f"{name} {exc}: {value!r}", param=name, code="invalid_time") from None
    if not _EARLIEST <= parsed <= _LATEST:
        raise InvalidRequest(
            f"{name} must be between 1900 and 9000: {value!r}", param=name, code="invalid_time"
        )
    return parsed


def _ceil_second(instant: datetime) -> datetime:
    whole = instant.replace(microsecond=0)
    return whole if whole == instant else whole + timedelta(seconds=1)


def _window_size(value: object) -> WindowSize:
    if value is None:
        return WindowSize.DAY
    if isinstance(value, str) and value in WindowSize.__members__:
        return WindowSize(value)
    raise InvalidRequest(
        f"window_size must be one of MINUTE, HOUR, DAY, not {value!r}",
        param="window_size",
        code="invalid_window_size",
    )


def _zone(value: object) -> tzinfo:
    if value is None:
        return UTC
    # Only names of the IANA database: ZoneInfo alone would also open e.g. the server's
    # `localtime`.
    if isinstance(value, str) and value in _iana_zones():
        return ZoneInfo(value)
    shown = repr(value)[:80]
    raise InvalidRequest(
        f"window_timezone must be an IANA time zone such as Europe/Berlin, not {shown}",
        param="window_timezone",
        code="invalid_timezone",
    )


@cache
def _iana_zones() -> frozenset[str]:
    """The zone names of the IANA database, from the `tzdata` package (a dependency) — not a walk
    of the system's zoneinfo directory, which also holds `localtime`."""
    try:
        listed = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    except (ModuleNotFoundError, OSError):
        return frozenset(available_timezones() - {"localtime", "posixrules"})
    return frozenset(listed.split())


def _group_by(value: object, fields: tuple[str, ...]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidRequest(
            "group_by must be a list of field names", param="group_by", code="invalid_type"
        )
    chosen: list[str] = []
    for item in value:
        if not isinstance(item, str) or item not in fields:
            raise InvalidRequest(
                f"group_by: unknown field {item!r}; allowed: {', '.join(fields)}",
                param="group_by",
                code="unknown_field",
            )
        if item not in chosen:
            chosen.append(item)
    return tuple(chosen)


def _filters(value: object, fields: tuple[str, ...]) -> dict[str, tuple[FilterValue, ...]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(
            "filter_group_by must be an object of field → list of values",
            param="filter_group_by",
            code="invalid_type",
        )
    filters: dict[str, tuple[FilterValue, ...]] = {}
    for field, values in value.items():
        param = f"filter_group_by.{field}"
        if field not in fields:
            raise InvalidRequest(
                f"filter_group_by: unknown field {field!r}; allowed: {', '.join(fields)}",
                param=param,
                code="unknown_field",
            )
        if not isinstance(values, list) or not all(v is None or isinstance(v, str) for v in values):
            raise InvalidRequest(
                f"{param} must be a list of strings (null matches events without one)",
                param=param,
                code="invalid_type",
            )
        filters[field] = tuple(_id(v, param) if field in _ID_FIELDS else _text(v) for v in values)
    return filters


def _text(value: str | None) -> str | None:
    # As stored users are (NUL dropped), so a filter matches them the same way.
    return None if value is None else without_nul(value)


def _id(value: str | None, param: str) -> uuid.UUID | None:
    if value is None:
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(
            f"{param}: {value!r} is not an id", param=param, code="invalid_value"
        ) from None
