"""API key material: `tg-` + 43 URL-safe random characters (256 bits), stored as SHA-256.

A fast unsalted hash is right here: the key is uniformly random, so there is nothing to
brute-force, and the hash is looked up on every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "tg-"
DISPLAY_CHARS = 8


class KeyScope(StrEnum):
    """What a key may do (SPEC 3.6)."""

    FULL = "full"  # the API, and the dashboard: keys, limits, top-ups, notifications
    INFERENCE = "inference"  # the API only


@dataclass(frozen=True, slots=True)
class NewKey:
    plaintext: str
    key_hash: bytes
    prefix: str


def hash_key(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


def generate_key() -> NewKey:
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    return NewKey(
        plaintext=plaintext,
        key_hash=hash_key(plaintext),
        prefix=plaintext[: len(KEY_PREFIX) + DISPLAY_CHARS],
    )
