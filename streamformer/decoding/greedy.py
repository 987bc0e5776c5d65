"""Greedy RNN-T decoding: per frame, join and take the arg max; a non-blank token is emitted and fed to the
predictor, up to ``max_symbols_per_step`` times; a blank ends the frame. Frames are a ``lax.scan``, a frame a
bounded ``lax.while_loop``, the batch decoded at once."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..rnnt import RNNT
from ..state import select_streams
from . import _common

__all__ = ["GreedySearch", "GreedyState", "greedy_frames", "greedy_search", "init_greedy_state"]


@flax.struct.dataclass
class GreedyState:
    """Greedy search state for B streams (streams on axis 0, the predictor state's own batch axis).

    tokens: (B, L) int32 emitted tokens; slots at or beyond ``lengths`` are meaningless.
    lengths: (B,) int32 tokens emitted so far (more than L means the buffer overflowed).
    predictor_out: (B, D) predictor output after the last emitted token (or the initial blank).
    predictor_state: the model's predictor state (``PredictorState``) after that token, batch of B.
    timestamps: (B, L) int32 the encoder frame (counted from the stream's start) of each emitted token.
    frames: (B,) int32 encoder frames decoded so far.
    """

    tokens: jax.Array
    lengths: jax.Array
    predictor_out: jax.Array
    predictor_state: Any
    timestamps: jax.Array = None
    frames: jax.Array = None


def init_greedy_state(
    model: RNNT, variables, batch_size: int, *, blank: int = -1, max_tokens: int = 1024
) -> GreedyState:
    """A fresh greedy state for ``batch_size`` streams: no tokens, predictor primed with the blank token."""
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
    )


def greedy_frames(
    model: RNNT,
    variables,
    state: GreedyState,
    encodings: jax.Array,
    lengths: jax.Array,
    *,
    blank: int,
    max_symbols_per_step: int,
) -> GreedyState:
    """Greedy search over encoder frames, continuing from ``state`` (jit-compatible; ``blank`` normalised).

    Args:
        state: from ``init_greedy_state`` or a previous call.
        encodings: (B, T', D) transcriber output.
        lengths: (B,) valid frames per stream; frames at or beyond are skipped.
    """
    B, L = state.tokens.shape

    def frame(carry, inputs):
        encoding, valid = inputs

        def cond(c):
            n, active = c[0], c[1]
            return jnp.any(active) & (n < max_symbols_per_step)

        def body(c):
            n, active, tokens, stamps, emitted, out, pstate = c
            token = jnp.argmax(_common.logits(model, variables, encoding, out), axis=-1).astype(jnp.int32)
            emit = active & (token != blank)
            position = jnp.where(emit, emitted, L)
            tokens = tokens.at[jnp.arange(B), position].set(token, mode="drop")
            stamps = stamps.at[jnp.arange(B), position].set(carry.frames, mode="drop")
            emitted = emitted + emit

            def advance(_):
                new_out, new_state = _common.predict(model, variables, jnp.where(emit, token, blank), pstate)
                return jnp.where(emit[:, None], new_out, out), select_streams(emit, new_state, pstate)

            out, pstate = jax.lax.cond(jnp.any(emit), advance, lambda _: (out, pstate), None)
            return n + 1, emit, tokens, stamps, emitted, out, pstate

        c = (
            jnp.int32(0),
            valid,
            carry.tokens,
            carry.timestamps,
            carry.lengths,
            carry.predictor_out,
            carry.predictor_state,
        )
        _, _, tokens, stamps, emitted, out, pstate = jax.lax.while_loop(cond, body, c)
        return GreedyState(tokens, emitted, out, pstate, stamps, carry.frames + valid), None

    valid = jnp.arange(encodings.shape[1])[:, None] < lengths[None, :]
    state, _ = jax.lax.scan(frame, state, (jnp.swapaxes(encodings, 0, 1), valid))
    return state


@dataclasses.dataclass(frozen=True)
class GreedySearch:
    """Greedy search as a search object (for ``StreamingDecoder``): at most ``max_symbols_per_step`` tokens
    per encoder frame."""

    max_symbols_per_step: int = 10
    return_timestamps: bool = False

    def __post_init__(self):
        _checks.positive_int("max_symbols_per_step", self.max_symbols_per_step)

    def init(self, model: RNNT, variables, batch_size: int, *, blank: int, max_tokens: int) -> GreedyState:
        return init_greedy_state(model, variables, batch_size, blank=blank, max_tokens=max_tokens)

    def frames(self, model: RNNT, variables, state: GreedyState, encodings, lengths, *, blank: int):
        return greedy_frames(
            model,
            variables,
            state,
            encodings,
            lengths,
            blank=blank,
            max_symbols_per_step=self.max_symbols_per_step,
        )

    def needs_more_room(self, state: GreedyState) -> bool:
        """Greedy search never reruns: tokens past the buffer are dropped and ``result`` raises."""
        return False

    def result(self, state: GreedyState) -> list[list[int]] | list[tuple[list[int], list[int]]]:
        """Each stream's emitted token ids; with ``return_timestamps``, (token ids, their encoder frames)."""
        tokens, lengths = np.asarray(state.tokens), np.asarray(state.lengths)
        if np.any(lengths > tokens.shape[1]):
            raise ValueError(
                f"max_tokens: a stream emitted {int(lengths.max())} tokens, more than max_tokens = "
                f"{tokens.shape[1]}; use a larger max_tokens"
            )
        return _results(tokens, np.asarray(state.timestamps), lengths, self.return_timestamps)


def _results(tokens, stamps, lengths, return_timestamps: bool):
    if return_timestamps:
        return [
            (tokens[b, : lengths[b]].tolist(), stamps[b, : lengths[b]].tolist()) for b in range(len(lengths))
        ]
    return [tokens[b, : lengths[b]].tolist() for b in range(len(lengths))]


@functools.partial(jax.jit, static_argnames=("model", "blank", "max_symbols_per_step", "max_tokens"))
def _greedy_encoded(model, variables, encodings, lengths, *, blank, max_symbols_per_step, max_tokens):
    state = init_greedy_state(model, variables, encodings.shape[0], blank=blank, max_tokens=max_tokens)
    state = greedy_frames(
        model, variables, state, encodings, lengths, blank=blank, max_symbols_per_step=max_symbols_per_step
    )
    return state.tokens, state.timestamps, state.lengths


def greedy_search(
    model: RNNT,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    *,
    blank: int = -1,
    max_symbols_per_step: int = 10,
    return_timestamps: bool = False,
) -> list[list[int]] | list[tuple[list[int], list[int]]]:
    """Greedy RNN-T decoding of a batch of utterances, one compiled program.

    Args:
        model: an ``RNNT``; variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        blank: the blank token id (negative counts from the end; -1 = V - 1, torchaudio's convention).
        max_symbols_per_step: the most tokens emitted per encoder frame.
        return_timestamps: also return, per token, the encoder frame it was emitted at.

    Returns:
        The emitted token ids of each utterance (the initial blank excluded); with ``return_timestamps``,
        (token ids, frames) per utterance (frames non-decreasing, each below the utterance's encoder length;
        ``timestamps.frame_period`` turns them into seconds).
    """
    blank = _common.check_blank(model, blank)
    _checks.positive_int("max_symbols_per_step", max_symbols_per_step)
    sources, source_lengths = jnp.asarray(sources), jnp.asarray(source_lengths)
    _common.check_sources(model, sources, source_lengths)
    encodings, encoding_lengths = _common.transcribe(model, variables, sources, source_lengths)
    tokens, stamps, lengths = _greedy_encoded(
        model,
        variables,
        encodings,
        encoding_lengths,
        blank=blank,
        max_symbols_per_step=max_symbols_per_step,
        max_tokens=max(1, encodings.shape[1] * max_symbols_per_step),
    )
    return _results(np.asarray(tokens), np.asarray(stamps), np.asarray(lengths), return_timestamps)
