"""Endpointing for streams: icefall's and sherpa's rules that decide when a live stream's utterance has
ended, so its result is final and the next utterance starts in the same slot.

A rule fires for a stream when all of its conditions hold (sherpa's ``EndpointRule``):

- ``must_contain_nonsilence``: the best hypothesis has emitted a token in this utterance;
- trailing silence >= ``min_trailing_silence`` seconds: the frames decoded since the best hypothesis' last
  token (or since the utterance began, when it has none);
- utterance length >= ``min_utterance_length`` seconds: the frames decoded in this utterance.

An endpoint is detected when any rule fires (and at least one frame was decoded). The defaults are sherpa's:
2.4 s of silence without any token, 1.2 s of silence after a token, 20 s of utterance.

    >>> config = EndpointConfig()
    >>> state = decoder.step(state, chunk, chunk_lengths)
    >>> state, finished = endpoint_step(decoder, state, config)   # [(stream, result, frames)]

``endpoint_step`` collects the results of the streams whose rules fired and resets their search state; their
transcriber (encoder) state goes on unless ``config.reset_encoder``. Frames are counted per utterance: the
timestamps of the next utterance start at 0 again (keep the returned frame counts to place it in the stream).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from .timestamps import frame_period as _frame_period

__all__ = ["EndpointConfig", "EndpointRule", "detect_endpoints", "endpoint_step", "rules_fired"]


def _seconds(name: str, value) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name}: expected a non-negative number of seconds, got {value!r}")
    return float(value)


@dataclasses.dataclass(frozen=True)
class EndpointRule:
    """One endpoint rule (all conditions must hold): see the module docstring."""

    must_contain_nonsilence: bool
    min_trailing_silence: float
    min_utterance_length: float

    def __post_init__(self):
        if not isinstance(self.must_contain_nonsilence, bool):
            raise ValueError(
                f"must_contain_nonsilence: expected a bool, got {self.must_contain_nonsilence!r}"
            )
        _seconds("min_trailing_silence", self.min_trailing_silence)
        _seconds("min_utterance_length", self.min_utterance_length)


@dataclasses.dataclass(frozen=True)
class EndpointConfig:
    """Endpoint rules (any firing ends the utterance) and what an endpoint resets.

    rules: EndpointRule tuple (default: sherpa's rule1, rule2, rule3).
    frame_period: seconds per encoder frame (default: 10 ms x the model's time-reduction stride).
    reset_encoder: also start the stream's transcriber state afresh (default: only the search state).
    """

    rules: tuple[EndpointRule, ...] = (
        EndpointRule(False, 2.4, 0.0),
        EndpointRule(True, 1.2, 0.0),
        EndpointRule(False, 0.0, 20.0),
    )
    frame_period: float | None = None
    reset_encoder: bool = False

    def __post_init__(self):
        rules = tuple(self.rules)
        if not rules or not all(isinstance(rule, EndpointRule) for rule in rules):
            raise ValueError(f"rules: expected a non-empty sequence of EndpointRule, got {self.rules!r}")
        object.__setattr__(self, "rules", rules)
        if self.frame_period is not None and (
            isinstance(self.frame_period, bool)
            or not isinstance(self.frame_period, (int, float))
            or not self.frame_period > 0
        ):
            raise ValueError(
                f"frame_period: expected a positive number of seconds, got {self.frame_period!r}"
            )


def rules_fired(
    config: EndpointConfig,
    frames: np.ndarray,
    num_tokens: np.ndarray,
    last_token_frame: np.ndarray,
    period: float,
) -> np.ndarray:
    """Which streams reached an endpoint, from per-stream counts (all (B,) ints): ``frames`` decoded in the
    utterance, ``num_tokens`` of its best hypothesis, ``last_token_frame`` the frame of that hypothesis' last
    token (ignored without tokens). Thresholds in seconds become frame counts (rounded up, with a small
    tolerance so that 1.2 s at 40 ms frames is 30 frames, not 31). Returns (B,) bool."""
    frames, num_tokens = np.asarray(frames), np.asarray(num_tokens)
    trailing = np.where(num_tokens > 0, frames - (np.asarray(last_token_frame) + 1), frames)
    fired = np.zeros(frames.shape, bool)
    for rule in config.rules:
        need_silence = math.ceil(rule.min_trailing_silence / period - 1e-6)
        need_length = math.ceil(rule.min_utterance_length / period - 1e-6)
        fired |= (
            ((num_tokens > 0) | (not rule.must_contain_nonsilence))
            & (trailing >= need_silence)
            & (frames >= need_length)
        )
    return fired & (frames > 0)


def _best_counts(search_state: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, tokens of the best hypothesis, frame of its last token) per stream, for any search state."""
    lengths, stamps = np.asarray(search_state.lengths), np.asarray(search_state.timestamps)
    if lengths.ndim == 2:  # beams: the first is the best
        lengths, stamps = lengths[:, 0], stamps[:, 0]
    lengths = np.minimum(lengths, stamps.shape[-1])
    last = stamps[np.arange(len(lengths)), np.maximum(lengths - 1, 0)]
    return np.asarray(search_state.frames), lengths, last


def detect_endpoints(decoder, state, config: EndpointConfig) -> np.ndarray:
    """(B,) bool: the streams of a ``StreamingDecoder`` state whose utterance reached an endpoint."""
    period = config.frame_period or _frame_period(decoder.model.config)
    return rules_fired(config, *_best_counts(state.search), period)


def endpoint_step(decoder, state, config: EndpointConfig) -> tuple[Any, list[tuple[int, Any, int]]]:
    """Detects endpoints and starts the next utterance where one was found.

    Returns:
        The state (search reset, and transcriber when ``config.reset_encoder``, where an endpoint fired), and
        for each such stream (stream index, its final result as ``decoder.result`` gives it, frames decoded
        in the utterance).
    """
    fired = detect_endpoints(decoder, state, config)
    if not fired.any():
        return state, []
    results = decoder.result(state)
    frames = np.asarray(state.search.frames)
    finished = [(int(b), results[b], int(frames[b])) for b in np.flatnonzero(fired)]
    return decoder.reset(state, fired, reset_transcriber=config.reset_encoder), finished
