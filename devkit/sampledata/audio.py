"""Tiny synthetic call recordings: a mono 8 kHz 8-bit WAV of a few tones, a few KiB each."""

from __future__ import annotations

import hashlib
import io
import math
import wave

RATE = 8000


def synthetic_wav(call_id: str, seconds: float = 1.0) -> bytes:
    """Deterministic for a call id: the tones are drawn from its hash."""
    digest = hashlib.sha256(call_id.encode()).digest()
    frames = bytearray()
    total = int(RATE * seconds)
    for i in range(total):
        tone = 300 + 40 * digest[(i * 8 // RATE) % len(digest)] % 900  # a new tone every 1/8 s
        frames.append(128 + int(60 * math.sin(2 * math.pi * tone * i / RATE)))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(RATE)
        out.writeframes(bytes(frames))
    return buffer.getvalue()
