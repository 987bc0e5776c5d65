"""The server's wire protocol (the contract clients are written against), and its limits.

Client to server, on ``ws://HOST:PORT/``:
- binary messages: float32 little-endian mono samples at 16 kHz, any number per message (at most
  ``MAX_MESSAGE_BYTES``), finite;
- optionally, as the first message, the text JSON ``{"sample_rate": N}``: the samples are at N Hz (resampled);
- the text message ``Done`` when the audio ends.

Server to client, text JSON: ``{"text": str, "final": bool, "segment": int, "words": [{"word", "start",
"end"}]}`` after every decoded segment (times in seconds from the stream's start); a segment is final at an
endpoint or at ``Done``; after ``Done`` the last message is final and the server closes normally. Segment
texts after the first spoken one start with a space, so the concatenation of the final texts is the
transcript. Errors: ``{"error": "..."}``, then a close of that connection only.
"""

from __future__ import annotations

import json
import math

import numpy as np

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "SAMPLE_RATE",
    "ProtocolError",
    "error_message",
    "parse_text",
    "result_message",
    "samples_of",
]

SAMPLE_RATE = 16000
MAX_MESSAGE_BYTES = 1 << 18  # 256 KiB: 4 s of 16 kHz float32 in one message
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 4000, 192000
DONE = "Done"

# Close codes (RFC 6455): 1007 invalid payload data, 1008 policy violation, 1009 message too big.
INVALID_DATA, POLICY, TOO_BIG = 1007, 1008, 1009


class ProtocolError(Exception):
    """A message the protocol does not allow: the connection gets ``{"error": message}`` and ``close_code``."""

    def __init__(self, message: str, close_code: int = POLICY):
        super().__init__(message)
        self.close_code = close_code


def samples_of(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> np.ndarray:
    """The float32 samples (n,) of a binary message; ProtocolError for a message over ``max_bytes``, one whose
    length is not a multiple of 4, or non-finite samples."""
    if len(data) > max_bytes:
        raise ProtocolError(
            f"binary message: expected at most {max_bytes} bytes ({max_bytes // 4} samples), got {len(data)}",
            TOO_BIG,
        )
    if len(data) % 4:
        raise ProtocolError(
            f"binary message: expected float32 samples (a multiple of 4 bytes), got {len(data)} bytes",
            INVALID_DATA,
        )
    samples = np.frombuffer(data, dtype="<f4").astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(samples))
    if bad.size:
        raise ProtocolError(
            f"binary message: expected finite samples, got {samples[bad[0]]} at sample {int(bad[0])} "
            f"({bad.size} non-finite)",
            INVALID_DATA,
        )
    return samples


def parse_text(text: str, *, first: bool, max_bytes: int = MAX_MESSAGE_BYTES) -> int | None:
    """A text message: None for ``Done``; the sample rate N of a first message ``{"sample_rate": N}``.
    ProtocolError for anything else."""
    if len(text) > max_bytes:
        raise ProtocolError(f"text message: expected at most {max_bytes} bytes, got {len(text)}", TOO_BIG)
    if text == DONE:
        return None
    shown = text if len(text) <= 80 else text[:80] + "..."
    try:
        blob = json.loads(text)
    except ValueError:
        blob = None
    if not isinstance(blob, dict) or set(blob) != {"sample_rate"}:
        raise ProtocolError(
            f'text message: expected "{DONE}" or, first, {{"sample_rate": N}}, got {shown!r}', POLICY
        )
    if not first:
        raise ProtocolError(
            'text message: {"sample_rate": N} must come before any audio, got it after audio', POLICY
        )
    rate = blob["sample_rate"]
    if isinstance(rate, float) and math.isfinite(rate) and rate.is_integer():
        rate = int(rate)
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ProtocolError(
            f"sample_rate: expected an integer number of Hz in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}], "
            f"got {rate!r}",
            POLICY,
        )
    return rate


def result_message(text: str, final: bool, segment: int, words) -> str:
    """The JSON of one result; ``words`` are ``streamformer.decoding.Word`` (text, start, end in seconds)."""
    return json.dumps(
        {
            "text": text,
            "final": final,
            "segment": segment,
            "words": [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words],
        }
    )


def error_message(message: str) -> str:
    return json.dumps({"error": message})
