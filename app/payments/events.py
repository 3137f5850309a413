"""What a signed Stripe webhook body is, before anything is done with it.

Stripe signs whatever it sends, so a valid signature says who sent a body, not that it is an
event Tollgate can act on. `read_event` turns any verified body into something the inbox can
store — the event, or the exact bytes when Postgres cannot hold the parsed event — and says why
it is rejected if it is no usable event. `Fields` reads the fields the service acts on, each of
the type and range it must have; anything else raises `MalformedStripeData`, which the inbox
stores as the event's rejection (SPEC 4: stored, answered 2xx, never retried).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from app.money import LEDGER_LIMIT

# The largest amount `stripe_payments` holds (bigint). In any currency (at most three
# decimals) that is far inside the ledger's range.
MAX_MINOR = 2**63 - 1
assert MAX_MINOR < LEDGER_LIMIT
# A Stripe id is about 30 characters; the unique indexes it goes into (event id, ledger
# reference, PaymentIntent) cannot take a very long one.
MAX_ID_LENGTH = 255
# Stripe's objects nest a few levels (more with expansions). Deeper bodies are kept as bytes:
# json.loads reads about a thousand levels, but writing them back as jsonb can then run out of
# recursion further down the stack.
MAX_DEPTH = 64
# Unix times up to the end of year 9999, as Python's datetime can hold them.
MAX_TIMESTAMP = 253_402_300_799
_CURRENCY = re.compile(r"[A-Za-z]{3}")


class Outcome(StrEnum):
    """What an event did; stored in `stripe_events.outcome` and sent back as `outcome`."""

    CREDITED = "credited"
    ALREADY_CREDITED = "already_credited"
    NOTHING_PAID = "nothing_paid"
    NOT_PAID = "not_paid"
    IGNORED_MODE = "ignored_mode"
    PAYMENT_FAILED = "payment_failed"
    REVERSED = "reversed"
    ALREADY_REVERSED = "already_reversed"
    CARD_SAVED = "card_saved"
    CARD_NOT_NEWER = "card_not_newer"
    NO_CARD_SAVED = "no_card_saved"
    NOT_SUCCEEDED = "not_succeeded"
    RECHARGE_FAILED = "recharge_failed"
    ALREADY_FINISHED = "already_finished"
    PENDING = "pending"
    UNKNOWN_ACCOUNT = "unknown_account"
    CURRENCY_MISMATCH = "currency_mismatch"
    # A refund or dispute of a payment not credited (yet): the inbox retries it for a while
    # (answered as WAITING_FOR_PAYMENT meanwhile).
    UNKNOWN_PAYMENT = "unknown_payment"
    WAITING_FOR_PAYMENT = "waiting_for_payment"
    IGNORED = "ignored"
    # Fields missing, of the wrong type or out of range: stored with its reason, never retried.
    REJECTED = "rejected"


class EventRefused(Exception):
    """An event acted on no further (an account that does not exist, a foreign currency), with
    the outcome to record: Lago's failure result, for one operation on one event."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome)
        self.outcome = outcome


class MalformedStripeData(Exception):
    """A Stripe object lacks a field the action needs, or has it of the wrong type or range."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A verified webhook body as the inbox stores it. `payload` is None when the parsed body
    cannot go into jsonb (then `body` keeps the exact bytes); `rejection` says why it is no
    event to act on, or is None."""

    id: str
    type: str | None
    payload: dict[str, Any] | None
    body: bytes | None
    rejection: str | None


def read_event(body: bytes) -> ReceivedEvent:
    """Any signed body → what to store. Never raises."""
    try:
        # Python's json reads NaN, Infinity and 5000-digit integers too; a deep nesting
        # exhausts its recursion, not ours.
        parsed: object = json.loads(body)
    except (ValueError, RecursionError):
        return _unreadable(body, "the body is not JSON")
    if not isinstance(parsed, dict):
        return _unreadable(body, "the body is not a JSON object")
    if problem := unstorable(parsed):
        event_id = parsed.get("id")
        if not isinstance(event_id, str) or _id_problem(event_id) is not None:
            return _unreadable(body, problem)
        return ReceivedEvent(event_id, _type_of(parsed), None, body, problem)
    event_id = parsed.get("id")
    if not isinstance(event_id, str):
        missing = event_id is None
        reason = "id is missing" if missing else f"id must be a string, not {_kind(event_id)}"
        return _unusable_id(body, parsed, reason)
    if problem := _id_problem(event_id):
        return _unusable_id(body, parsed, problem)
    return ReceivedEvent(event_id, _type_of(parsed), parsed, None, _envelope_problem(parsed))


def unstorable(value: object) -> str | None:
    """Why Postgres cannot store `value` as jsonb (or its strings as text), or None: a NUL
    character, a lone surrogate, or a NaN or infinite number anywhere in it, or more than
    `MAX_DEPTH` levels of nesting."""
    stack: list[tuple[object, str, int]] = [(value, "", 0)]
    while stack:  # a loop, not recursion: json.loads nests as deep as its own recursion goes
        item, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"the event nests deeper than {MAX_DEPTH} levels"
        if isinstance(item, str):
            if problem := _text_problem(item):
                return f"{path or 'the event'} {problem}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                shown = "NaN" if math.isnan(item) else "Infinity" if item > 0 else "-Infinity"
                return f"{path or 'the event'} is {shown}, which JSON has no number for"
        elif isinstance(item, dict):
            for key, child in item.items():
                if problem := _text_problem(key):
                    return f"a field name in {path or 'the event'} {problem}"
                stack.append((child, f"{path}.{_show(key)}" if path else _show(key), depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "contains a lone surrogate (no UTF-8 text)"
    return None


def _id_problem(event_id: str) -> str | None:
    if not event_id:
        return "id is empty"
    if problem := _text_problem(event_id):
        return f"id {problem}"
    if len(event_id) > MAX_ID_LENGTH:
        return f"id is longer than {MAX_ID_LENGTH} characters"
    return None


def _envelope_problem(event: Mapping[str, object]) -> str | None:
    kind = event.get("type")
    if kind is None:
        return "type is missing"
    if not isinstance(kind, str):
        return f"type must be a string, not {_kind(kind)}"
    data = event.get("data")
    if data is None:
        return "data is missing"
    if not isinstance(data, dict):
        return f"data must be an object, not {_kind(data)}"
    obj = data.get("object")
    if obj is None:
        return "data.object is missing"
    if not isinstance(obj, dict):
        return f"data.object must be an object, not {_kind(obj)}"
    return None


def _type_of(event: Mapping[str, object]) -> str | None:
    kind = event.get("type")
    return kind if isinstance(kind, str) and _text_problem(kind) is None else None


def _unreadable(body: bytes, reason: str) -> ReceivedEvent:
    """Kept as its bytes under an id derived from them, so a re-delivery is a duplicate."""
    return ReceivedEvent(_body_id(body), None, None, body, reason)


def _unusable_id(body: bytes, event: dict[str, Any], reason: str) -> ReceivedEvent:
    return ReceivedEvent(_body_id(body), _type_of(event), event, None, reason)


def _body_id(body: bytes) -> str:
    return f"invalid:{hashlib.sha256(body).hexdigest()}"


def _show(key: str) -> str:
    """A field name as it can appear in a stored reason: escaped, and not too long."""
    shown = json.dumps(key)[1:-1]
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _big(value: int) -> str:
    """An integer for a reason: in full unless it is very long."""
    digits = str(abs(value))
    return str(value) if len(digits) <= 40 else f"an integer of {len(digits)} digits"


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


class Fields:
    """Typed reads of one Stripe object (`path` names it in reasons, e.g. `data.object`)."""

    __slots__ = ("_obj", "_path")

    def __init__(self, obj: Mapping[str, object], path: str) -> None:
        self._obj = obj
        self._path = path

    def _reject(self, name: str, problem: str) -> MalformedStripeData:
        return MalformedStripeData(f"{self._path}.{_show(name)} {problem}")

    def _required(self, name: str) -> object:
        value = self._obj.get(name)
        if value is None:
            raise self._reject(name, "is missing")
        return value

    def text(self, name: str) -> str:
        """A non-empty string."""
        value = self._required(name)
        if not isinstance(value, str):
            raise self._reject(name, f"must be a string, not {_kind(value)}")
        if not value:
            raise self._reject(name, "is empty")
        return value

    def id(self, name: str = "id") -> str:
        """A required Stripe id."""
        value = self.text(name)
        if len(value) > MAX_ID_LENGTH:
            raise self._reject(name, f"is longer than {MAX_ID_LENGTH} characters")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self._obj.get(name)
        if value is not None and not isinstance(value, str):
            raise self._reject(name, f"must be a string, not {_kind(value)}")
        return value

    def stripe_id(self, name: str) -> str | None:
        """An id field that may be null, a bare id or an expanded object with an id."""
        value = self._obj.get(name)
        if isinstance(value, dict):
            value = value.get("id")
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self._reject(name, "must be an id or an object with one")
        if len(value) > MAX_ID_LENGTH:
            raise self._reject(name, f"is longer than {MAX_ID_LENGTH} characters")
        return value

    def minor_amount(self, name: str, *, positive: bool = False) -> int:
        """An amount in the currency's minor unit: an integer from 0 (1 if `positive`) to
        what the ledger and `stripe_payments` hold."""
        value = self._required(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._reject(name, f"must be an integer amount, not {_kind(value)}")
        lowest = 1 if positive else 0
        if not lowest <= value <= MAX_MINOR:
            raise self._reject(name, f"must be between {lowest} and {MAX_MINOR}, not {_big(value)}")
        return value

    def optional_minor_amount(self, name: str) -> int | None:
        return None if self._obj.get(name) is None else self.minor_amount(name)

    def currency(self, name: str = "currency") -> str:
        """A three-letter ISO code, upper case."""
        value = self.text(name)
        if not _CURRENCY.fullmatch(value):
            raise self._reject(name, "must be a three-letter currency code")
        return value.upper()

    def timestamp(self, name: str) -> datetime:
        value = self._required(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._reject(name, f"must be a Unix time, not {_kind(value)}")
        if not 0 <= value <= MAX_TIMESTAMP:
            raise self._reject(name, f"must be a Unix time up to year 9999, not {_big(value)}")
        return datetime.fromtimestamp(value, UTC)

    def mapping(self, name: str) -> dict[str, Any]:
        """An optional object (`{}` when missing or null)."""
        value = self._obj.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._reject(name, f"must be an object, not {_kind(value)}")
        return value

    def nested(self, name: str) -> Fields:
        return Fields(self.mapping(name), f"{self._path}.{_show(name)}")

    def ids_in_list(self, name: str) -> list[str]:
        """The ids of the objects of an optional Stripe list (`{"data": [...]}`)."""
        listing = self.nested(name)
        items = listing._obj.get("data")
        if items is None:
            return []
        if not isinstance(items, list):
            raise listing._reject("data", f"must be an array, not {_kind(items)}")
        return [i["id"] for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]

    def get(self, name: str) -> object:
        """A field read as is, for values only compared or passed on as text."""
        return self._obj.get(name)
