"""Greedy RNN-T decoding: per frame, join and take the arg max; a non-blank token is emitted and fed to the
predictor, up to ``max_symbols_per_step`` times; a blank ends the frame. Frames are a ``lax.scan``, a frame a
bounded ``lax.while_loop``, the batch decoded at once."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import RNNT, _checks
from ..state import select_streams
from . import _common
from .search import FrameSearch, Hypothesis, decode, hypotheses

__all__ = ["GreedySearch", "GreedyState", "greedy_search"]


@flax.struct.dataclass
class GreedyState:
    """Greedy search state for B streams (streams on axis 0, the predictor state's own batch axis).

    tokens: (B, L) int32 emitted tokens; slots at or beyond ``lengths`` are meaningless.
    lengths: (B,) int32 tokens emitted so far (more than L means the buffer overflowed).
    predictor_out: (B, D) predictor output after the last emitted token (or the initial blank).
    predictor_state: the model's predictor state (``PredictorState``) after that token, batch of B.
    timestamps: (B, L) int32 the encoder frame (counted from the stream's start) of each emitted token.
    frames: (B,) int32 encoder frames decoded so far.
    scores: (B,) float32 log-probability of the path chosen so far (its tokens and the blanks that ended
        its frames).
    """

    tokens: jax.Array
    lengths: jax.Array
    predictor_out: jax.Array
    predictor_state: Any
    timestamps: jax.Array = None
    frames: jax.Array = None
    scores: jax.Array = None


@dataclasses.dataclass(frozen=True)
class GreedySearch(FrameSearch):
    """Greedy search: at most ``max_symbols_per_step`` tokens per encoder frame; ``return_timestamps`` fills
    ``Hypothesis.timestamps`` (it only shapes ``result``: the compiled search is the same either way)."""

    max_symbols_per_step: int = 10
    return_timestamps: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self):
        _checks.positive_int("max_symbols_per_step", self.max_symbols_per_step)

    def init(self, model: RNNT, variables, batch_size: int, *, blank: int, max_tokens: int) -> GreedyState:
        """No tokens, the predictor primed with the blank token."""
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("max_tokens", max_tokens)
        blank = _common.check_blank(model, blank)
        out, state = _common.primed(model, variables, blank, batch_size)
        return GreedyState(
            tokens=jnp.zeros((batch_size, max_tokens), jnp.int32),
            lengths=jnp.zeros((batch_size,), jnp.int32),
            predictor_out=out,
            predictor_state=state,
            timestamps=jnp.zeros((batch_size, max_tokens), jnp.int32),
            frames=jnp.zeros((batch_size,), jnp.int32),
            scores=jnp.zeros((batch_size,), jnp.float32),
        )

    def frame(
        self, model: RNNT, variables, state: GreedyState, encoding, valid, *, blank: int
    ) -> GreedyState:
        B, L = state.tokens.shape

        def cond(c):
            n, active = c[0], c[1]
            return jnp.any(active) & (n < self.max_symbols_per_step)

        def body(c):
            n, active, tokens, stamps, emitted, scores, out, pstate = c
            logits = _common.logits(model, variables, encoding, out)
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
            chosen = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
            scores = scores + jnp.where(active, chosen, 0.0)
            emit = active & (token != blank)
            position = jnp.where(emit, emitted, L)
            tokens = tokens.at[jnp.arange(B), position].set(token, mode="drop")
            stamps = stamps.at[jnp.arange(B), position].set(state.frames, mode="drop")
            emitted = emitted + emit

            def advance(_):
                new_out, new_state = _common.predict(model, variables, jnp.where(emit, token, blank), pstate)
                return jnp.where(emit[:, None], new_out, out), select_streams(emit, new_state, pstate)

            out, pstate = jax.lax.cond(jnp.any(emit), advance, lambda _: (out, pstate), None)
            return n + 1, emit, tokens, stamps, emitted, scores, out, pstate

        c = (
            jnp.int32(0),
            valid,
            state.tokens,
            state.timestamps,
            state.lengths,
            state.scores,
            state.predictor_out,
            state.predictor_state,
        )
        _, _, tokens, stamps, emitted, scores, out, pstate = jax.lax.while_loop(cond, body, c)
        return GreedyState(tokens, emitted, out, pstate, stamps, state.frames + valid, scores)

    def token_room(self, frames: int) -> int:
        """Room for every token: ``max_symbols_per_step`` per frame."""
        return max(1, frames * self.max_symbols_per_step)

    def result(self, state: GreedyState) -> list[list[Hypothesis]]:
        """One hypothesis per stream: its emitted token ids, the path's log-probability, and (with
        ``return_timestamps``) the encoder frame of each token. Greedy search never reruns: a stream that
        emitted more than ``max_tokens`` tokens raises."""
        tokens, lengths = np.asarray(state.tokens), np.asarray(state.lengths)
        if np.any(lengths > tokens.shape[1]):
            raise ValueError(
                f"max_tokens: a stream emitted {int(lengths.max())} tokens, more than max_tokens = "
                f"{tokens.shape[1]}; use a larger max_tokens"
            )
        stamps = np.asarray(state.timestamps)[:, None] if self.return_timestamps else None
        return hypotheses(tokens[:, None], lengths[:, None], np.asarray(state.scores)[:, None], stamps)


def greedy_search(
    model: RNNT,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    *,
    blank: int = -1,
    max_symbols_per_step: int = 10,
    return_timestamps: bool = False,
) -> list[list[Hypothesis]]:
    """Greedy RNN-T decoding of a batch of utterances (``decode`` with ``GreedySearch``).

    Args:
        model: an ``RNNT``; variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        blank: the blank token id (negative counts from the end; -1 = V - 1, torchaudio's convention).
        max_symbols_per_step: the most tokens emitted per encoder frame.
        return_timestamps: fill ``Hypothesis.timestamps`` with each token's encoder frame.

    Returns:
        For each utterance, one ``Hypothesis``: the emitted token ids (the initial blank excluded), the
        path's log-probability, and with ``return_timestamps`` the frames (non-decreasing, each below the
        utterance's encoder length; ``timestamps.frame_period`` turns them into seconds).
    """
    search = GreedySearch(max_symbols_per_step, return_timestamps=bool(return_timestamps))
    return decode(model, variables, sources, source_lengths, search, blank=blank)
