"""The length of uploaded audio, read from its container (mutagen: MP3, MP4/M4A, Ogg/Opus,
FLAC, WAV, AIFF, …), for transcription holds and charges when the upstream reports none, and
for audio input parts of chat requests."""

from __future__ import annotations

import binascii
import io
import logging

import mutagen

logger = logging.getLogger(__name__)

# When the container cannot be read (WebM, say), the most seconds a number of bytes can hold:
# speech codecs go down to ~8 kbit/s (Opus, AMR-WB), so 1 kB per second errs high.
FLOOR_BYTES_PER_SECOND = 1_000


def duration(data: bytes) -> float | None:
    """Seconds of audio in `data`, or None if mutagen cannot read its container."""
    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises a zoo of errors on malformed files
        logger.debug("unreadable audio container", exc_info=True)
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    if not isinstance(length, int | float) or not length >= 0 or length == float("inf"):
        return None
    return float(length)


def most_seconds(data: bytes) -> float:
    """Seconds for a hold: the container's length, else the most the bytes can hold."""
    seconds = duration(data)
    return seconds if seconds is not None else len(data) / FLOOR_BYTES_PER_SECOND


def base64_duration(data: str) -> float:
    """`most_seconds` of a base64 audio input part (undecodable data: by its length)."""
    try:
        raw = binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return len(data) * 3 / 4 / FLOOR_BYTES_PER_SECOND
    return most_seconds(raw)
