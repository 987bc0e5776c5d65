"""What every search shares: argument checks, the model calls a search makes (one predictor step, one join),
and the hashes that identify token sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import RNNT, _checks

# Two odd multipliers for the polynomial hashes of token sequences (uint32 arithmetic wraps modulo 2**32).
_HASH_MULTIPLIERS = np.array([1000003, 2654435761], dtype=np.uint32)


def check_blank(model: RNNT, blank) -> int:
    """``blank`` normalised to [0, V) (negative counts from the end)."""
    V = model.num_symbols
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not -V <= blank < V:
        raise ValueError(
            f"blank: expected a token id in [-{V}, {V}) (negative counts from the end), got {blank!r}"
        )
    return int(blank) % V


def check_beam_width(model: RNNT, beam_width) -> int:
    V = model.num_symbols
    if (
        isinstance(beam_width, bool)
        or not isinstance(beam_width, (int, np.integer))
        or not 1 <= beam_width < V
    ):
        raise ValueError(
            f"beam_width: expected an integer in [1, num_symbols - 1 = {V - 1}], got {beam_width!r}"
        )
    return int(beam_width)


def check_temperature(temperature) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    return float(temperature)


def check_sources(model: RNNT, sources, source_lengths) -> None:
    F = model.config.input_dim
    R = model.right_context_length
    _checks.array_shape("sources", sources, (None, None, F), "(B, T + right_context_length, input_dim)")
    _checks.floating_array("sources", sources)
    if sources.shape[1] < R + 1:
        raise ValueError(
            f"sources: expected at least right_context_length + 1 = {R + 1} frames, got {sources.shape[1]}"
        )
    _checks.array_shape("source_lengths", source_lengths, (sources.shape[0],), "(B,) matching sources' batch")
    _checks.integer_array("source_lengths", source_lengths)
    _checks.lengths_in_range("source_lengths", source_lengths, 0, sources.shape[1] - R)


def check_chunk(model: RNNT, features, lengths) -> tuple[jax.Array, jax.Array]:
    """A streaming chunk (B, S + R, F) and its lengths (B,), right context included."""
    S, R, F = model.segment_length, model.right_context_length, model.config.input_dim
    features, lengths = jnp.asarray(features), jnp.asarray(lengths)
    _checks.array_shape("segment_features", features, (None, S + R, F), "(B, S + R, input_dim)")
    _checks.floating_array("segment_features", features)
    _checks.array_shape("segment_lengths", lengths, (features.shape[0],), "(B,) matching the batch")
    _checks.integer_array("segment_lengths", lengths)
    _checks.lengths_in_range("segment_lengths", lengths, 0, S + R)
    return features, lengths.astype(jnp.int32)


def predict(model: RNNT, variables, tokens: jax.Array, state):
    """tokens (N,) int, predictor state (batch N) -> predictor output (N, D) after one token, new state."""
    return model.apply(variables, tokens, state, method=RNNT.predict_step)


def logits(model: RNNT, variables, frame: jax.Array, predictor_out: jax.Array) -> jax.Array:
    """frame (D,) or (N, D), predictor_out (N, D) -> joiner logits (N, V)."""
    frame = jnp.broadcast_to(frame, predictor_out.shape)
    return model.apply(variables, frame[:, None], predictor_out[:, None], method=RNNT.joint_logits)[:, 0, 0]


def primed(model: RNNT, variables, blank: int, count: int):
    """Predictor output (count, D) and state after the blank token, as torchaudio's search starts."""
    return predict(model, variables, jnp.full((count,), blank, jnp.int32), None)


def fresh_hypotheses(
    model: RNNT, variables, batch_size: int, beam_width: int, blank: int, max_tokens: int
) -> dict:
    """The fields every beam-style search state starts with, for ``batch_size`` streams of K = ``beam_width``
    slots: one hypothesis (the blank-primed predictor, score 0), the other K - 1 slots empty (score -inf),
    token and timestamp buffers of ``max_tokens`` slots, no frames decoded yet."""
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("max_tokens", max_tokens)
    blank = check_blank(model, blank)
    K = check_beam_width(model, beam_width)
    out, pstate = primed(model, variables, blank, K)
    stack = lambda x: jnp.broadcast_to(x, (batch_size, *x.shape))  # noqa: E731
    return dict(
        tokens=jnp.zeros((batch_size, K, max_tokens), jnp.int32),
        timestamps=jnp.zeros((batch_size, K, max_tokens), jnp.int32),
        lengths=jnp.zeros((batch_size, K), jnp.int32),
        scores=stack(jnp.full((K,), -jnp.inf, jnp.float32).at[0].set(0.0)),
        hashes=jnp.zeros((batch_size, K, 2), jnp.uint32),
        predictor_out=stack(out),
        predictor_state=jax.tree_util.tree_map(stack, pstate),
        frames=jnp.zeros((batch_size,), jnp.int32),
    )


def extend_hashes(hashes: jax.Array, tokens: jax.Array) -> jax.Array:
    """hashes (..., 2) uint32 of token sequences, extended by ``tokens`` (...)."""
    return hashes * jnp.asarray(_HASH_MULTIPLIERS) + (tokens.astype(jnp.uint32) + 1)[..., None]


def token_overflow(state) -> bool:
    """Whether a hypothesis (score above -inf) of a beam-style state, buffers (B, K, L), emitted more than
    its L token slots hold."""
    used = np.asarray(state.lengths)[np.asarray(state.scores) > -np.inf]
    return bool(used.size and used.max() > state.tokens.shape[-1])


def grown_token_slots(old, new):
    """``old`` (a beam-style state) with token and timestamp slots at least as many as ``new``'s, and room
    for the longest hypothesis of ``new`` (a power of two, with margin) where it overflowed."""
    slots = max(old.tokens.shape[-1], new.tokens.shape[-1])
    longest = int(np.asarray(new.lengths).max())
    if longest > slots:
        slots = 1 << (2 * longest - 1).bit_length()
    pad = ((0, 0), (0, 0), (0, slots - old.tokens.shape[-1]))
    return old.replace(tokens=jnp.pad(old.tokens, pad), timestamps=jnp.pad(old.timestamps, pad))


def transcribe(model: RNNT, variables, sources, source_lengths):
    """The offline transcriber, compiled once per model and input shape and shared by every search."""
    return _transcribe(model, variables, sources, source_lengths.astype(jnp.int32))


def _transcribe_impl(model, variables, sources, source_lengths):
    return model.apply(variables, sources, source_lengths, method=RNNT.transcribe)


_transcribe = jax.jit(_transcribe_impl, static_argnames=("model",))
