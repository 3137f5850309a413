"""The length of uploaded audio, read from its container (mutagen: MP3, MP4/M4A, Ogg/Opus,
FLAC, WAV, AIFF, …), for transcription holds and charges when the upstream reports none, and
for audio input parts of chat requests."""

from __future__ import annotations

import binascii
import io
import logging

import mutagen

logger = logging.getLogger(__name__)

# The most seconds a number of bytes can hold: speech codecs go down to ~8 kbit/s (Opus,
# AMR-WB), so 1 kB per second errs high. A hold never assumes less audio than this, whatever
# the container says: its header is written by the client (an MP3's Xing frame count can say
# one frame in front of ten minutes of them).
FLOOR_BYTES_PER_SECOND = 1_000
# A length implying more bytes per second than uncompressed 96 kHz 24-bit stereo (576 kB/s)
# is not believed.
CEILING_BYTES_PER_SECOND = 600_000


def duration(data: bytes) -> float | None:
    """Seconds of audio in `data` as its container says, or None if mutagen cannot read it
    or the length is implausibly short for the bytes."""
    try:
        parsed = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen raises a zoo of errors on malformed files
        logger.debug("unreadable audio container", exc_info=True)
        return None
    length = getattr(getattr(parsed, "info", None), "length", None)
    if not isinstance(length, int | float) or not length >= 0 or length == float("inf"):
        return None
    if length * CEILING_BYTES_PER_SECOND < len(data):
        logger.debug("audio container claims %s s for %d bytes: not believed", length, len(data))
        return None
    return float(length)


def most_seconds(size: int, measured: float | None) -> float:
    """Seconds for a hold of `size` bytes of audio: at least the most they can hold at the
    lowest bitrate, more if the container says so (a lower bitrate still)."""
    return max(measured or 0.0, size / FLOOR_BYTES_PER_SECOND)


def base64_most_seconds(data: str) -> float:
    """`most_seconds` of a base64 audio input part (undecodable data: by its length)."""
    try:
        raw = binascii.a2b_base64(data)
    except (binascii.Error, ValueError):
        return len(data) * 3 / 4 / FLOOR_BYTES_PER_SECOND
    return most_seconds(len(raw), duration(raw))
