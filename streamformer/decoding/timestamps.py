"""Token and word times from a search's timestamps.

Every search records, per emitted token, the encoder frame it was emitted at (``return_timestamps=True``
on ``greedy_search``, ``beam_search``, ``GreedySearch``, ``BeamSearch``; always on ``modified_beam_search``
and ``ModifiedBeamSearch``). An encoder frame lasts ``frame_period`` seconds: the feature hop times the
transcriber's time-reduction stride (10 ms x 4 = 40 ms for emformer_rnnt_base).

Words follow SentencePiece's convention: a piece starting with "\u2581" begins a word. A word starts at its
first piece's frame and ends at the end of its last piece's frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

__all__ = ["WORD_BOUNDARY", "Word", "frame_period", "word_times"]

WORD_BOUNDARY = "\u2581"


@dataclasses.dataclass(frozen=True)
class Word:
    """One word: its text, start and end in seconds (from the stream's or utterance's start)."""

    text: str
    start: float
    end: float


def frame_period(config, hop_seconds: float = 0.01) -> float:
    """Seconds per encoder frame: ``hop_seconds`` (the feature hop) x ``config.time_reduction_stride``.

    ``config`` is a ``TransducerConfig`` (``model.config``) or anything with ``time_reduction_stride``."""
    if not hop_seconds > 0:
        raise ValueError(f"hop_seconds: expected a positive number of seconds, got {hop_seconds!r}")
    return float(hop_seconds) * int(config.time_reduction_stride)


def word_times(
    pieces: Sequence[str], frames: Sequence[int], period: float, *, offset: float = 0.0
) -> list[Word]:
    """Words with start and end times from token pieces and their emission frames.

    Args:
        pieces: the SentencePiece piece of each emitted token (``tokenizer.sp_model.id_to_piece(id)``), in
            order; pieces starting with "\u2581" begin a word, others continue the current one (a first
            piece without it starts a word too).
        frames: the encoder frame of each token (a search's timestamps), non-decreasing.
        period: seconds per encoder frame (``frame_period``).
        offset: seconds added to every time (the utterance's start within a longer stream).

    Returns:
        The words in order; ``start`` = first piece's frame x period, ``end`` = (last piece's frame + 1) x
        period, both plus ``offset``.
    """
    pieces, frames = list(pieces), [int(f) for f in frames]
    if len(pieces) != len(frames):
        raise ValueError(
            f"frames: expected one frame per piece ({len(pieces)} pieces), got {len(frames)} frames"
        )
    if any(b < a for a, b in zip(frames, frames[1:])):
        raise ValueError(f"frames: expected non-decreasing frames, got {frames}")
    if not period > 0:
        raise ValueError(f"period: expected a positive number of seconds per frame, got {period!r}")
    words: list[list] = []  # [text, first frame, last frame]
    for piece, frame in zip(pieces, frames):
        if piece.startswith(WORD_BOUNDARY) or not words:
            text = piece[len(WORD_BOUNDARY) :] if piece.startswith(WORD_BOUNDARY) else piece
            words.append([text, frame, frame])
        else:
            words[-1][0] += piece
            words[-1][2] = frame
    return [
        Word(text, offset + first * period, offset + (last + 1) * period)
        for text, first, last in words
        if text
    ]
