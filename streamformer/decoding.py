"""RNN-T decoding: greedy and beam search, offline and streaming, batched and jit-compiled.

torchaudio's ``RNNTBeamSearch`` decodes one utterance at a time in a Python loop over lists of hypotheses.
Here the same search runs on fixed-shape arrays inside compiled programs, for a batch of utterances at once:

- a hypothesis is a row of padded arrays: emitted tokens (a buffer of ``max_tokens`` slots), their count, the
  score, two 32-bit polynomial hashes of the token sequence (merging identical sequences compares hashes and
  lengths instead of Python strings), the predictor output and the predictor state;
- the beams of an utterance live in ``beam_width`` slots; empty slots have score -inf;
- a frame is a bounded ``lax.while_loop`` over torchaudio's inner loop; the frames are a ``lax.scan``; the
  batch is a ``vmap`` of one utterance's search.

Semantics are torchaudio 2.8's (``torchaudio/models/rnnt_decoder.py``), step for step. Per frame, A is the set
being expanded (at first the previous frame's beams) and B the set of hypotheses that ended the frame with a
blank:

1. log-probabilities ``log_softmax(join(frame, A) / temperature)``;
2. each A hypothesis plus blank joins B; if B already holds the same token sequence, the two merge (the
   older leaves B, the new one gets ``logaddexp`` of both scores);
3. after ``step_max_tokens`` expansions the frame ends; otherwise the ``beam_width`` best non-blank extensions
   of A (over all hypotheses and tokens) whose score beats B's ``beam_width``-th best score become the new A;
4. the frame ends when A is empty; the next frame starts from the ``beam_width`` best of B by
   ``score / (len(tokens) + 1)`` where ``tokens`` counts the initial blank (so ``score / (emitted + 2)``).

The predictor is primed with the blank token. The returned tokens exclude that initial blank. Token ids are
returned raw: ``streamformer.text.TokenProcessor`` (torchaudio's ``_SentencePieceTokenProcessor``) turns them
into text; it drops the first token as torchaudio's does, so give it ``[blank, *hypothesis.tokens]``.

Exactness needs room: the hypotheses A of one frame are kept in a pool of ``beam_width * (expansion_capacity
+ 1)`` rows, and tokens in ``max_tokens`` slots. A search that needs more flags ``overflow``; the offline
functions then run again with twice the room, and ``StreamingDecoder.step`` redoes the step with more room, so
results never silently differ from torchaudio's.

Where we differ from torchaudio on purpose: frames past an utterance's valid length (padding, or the part of
a last partial segment with no frames) are not decoded. torchaudio decodes every frame of the encoder output
it is given, valid or not.

Letters: B batch (utterances or streams), K beam_width, T input frames, T' encoder frames, D encoding_dim,
V num_symbols, L max_tokens, F input features, S segment_length, R right_context_length.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = [
    "Hypothesis",
    "GreedyState",
    "BeamState",
    "StreamingDecoderState",
    "StreamingDecoder",
    "greedy_search",
    "beam_search",
    "init_greedy_state",
    "init_beam_state",
    "greedy_frames",
    "beam_frames",
]

# Two odd multipliers for the polynomial hashes of token sequences (uint32 arithmetic wraps modulo 2**32).
_HASH_MULTIPLIERS = np.array([1000003, 2654435761], dtype=np.uint32)


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One beam search result: ``tokens`` the emitted token ids (without the initial blank), ``score`` the
    total log-probability (torchaudio's ``hypo[3]``)."""

    tokens: list[int]
    score: float


@flax.struct.dataclass
class GreedyState:
    """Greedy search state for B streams.

    tokens: (B, L) int32 emitted tokens; slots at or beyond ``lengths`` are meaningless.
    lengths: (B,) int32 tokens emitted so far (more than L means the buffer overflowed).
    predictor_out: (B, D) predictor output after the last emitted token (or the initial blank).
    predictor_state: the model's predictor state (``PredictorState``) after that token, batch of B.
    """

    tokens: jax.Array
    lengths: jax.Array
    predictor_out: jax.Array
    predictor_state: Any


@flax.struct.dataclass
class BeamState:
    """Beam search state for B streams of K beams each, best beam first (by torchaudio's ranking key).

    tokens: (B, K, L) int32 emitted tokens (without the initial blank); slots at or beyond ``lengths`` are
        meaningless.
    lengths: (B, K) int32 tokens emitted (more than L means the buffer overflowed).
    scores: (B, K) float32 log-probability of each beam; -inf marks an empty beam slot.
    hashes: (B, K, 2) uint32 two polynomial hashes of each beam's token sequence (for merges).
    predictor_out: (B, K, D) predictor output after each beam's last token.
    predictor_state: the model's predictor state, each leaf with the stream axis B first and the model's batch
        axis holding the K beams (e.g. ``PredictorState.hidden`` (B, num_lstm_layers, K, H)).
    overflow: (B,) bool a frame needed more than ``expansion_capacity`` expansions (results inexact).
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    hashes: jax.Array
    predictor_out: jax.Array
    predictor_state: Any
    overflow: jax.Array

    @property
    def beam_width(self) -> int:
        return self.scores.shape[1]


# ------------------------------------------------------------------------------------------------------------
# Argument checks and model helpers


def _num_symbols(model) -> int:
    return model.predictor.num_symbols


def _check_blank(model, blank) -> int:
    V = _num_symbols(model)
    if isinstance(blank, bool) or not isinstance(blank, (int, np.integer)) or not -V <= blank < V:
        raise ValueError(
            f"blank: expected a token id in [-{V}, {V}) (negative counts from the end), got {blank!r}"
        )
    return int(blank) % V


def _check_beam_width(model, beam_width) -> int:
    V = _num_symbols(model)
    if (
        isinstance(beam_width, bool)
        or not isinstance(beam_width, (int, np.integer))
        or not 1 <= beam_width < V
    ):
        raise ValueError(
            f"beam_width: expected an integer in [1, num_symbols - 1 = {V - 1}], got {beam_width!r}"
        )
    return int(beam_width)


def _check_sources(model, sources, source_lengths) -> None:
    F = model.transcriber.input_dim
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


def _batch_axes(init_state):
    """The batch axis of each leaf of a state pytree, comparing the states of batch sizes 1 and 2."""

    def axis(one, two):
        return next(i for i, (a, b) in enumerate(zip(one.shape, two.shape, strict=True)) if a != b)

    return jax.tree_util.tree_map(axis, init_state(1), init_state(2))


def _take(tree, axes, index):
    return jax.tree_util.tree_map(lambda ax, x: jnp.take(x, index, axis=ax), axes, tree)


def _select(mask, new, old, axes):
    """Per batch entry (mask (N,) bool, along each leaf's batch axis): ``new`` where True, else ``old``."""

    def pick(ax, a, b):
        shape = [1] * a.ndim
        shape[ax] = -1
        return jnp.where(mask.reshape(shape), a, b)

    return jax.tree_util.tree_map(pick, axes, new, old)


def _predict(model, variables, tokens, state):
    """tokens (N,) int, state (batch N) -> predictor output (N, D) after one token, new state."""
    out, _, state = model.apply(
        variables, tokens[:, None], jnp.ones(tokens.shape, jnp.int32), state, method="predict"
    )
    return out[:, 0], state


def _logits(model, variables, frame, predictor_out):
    """frame (D,) or (N, D), predictor_out (N, D) -> joiner logits (N, V)."""
    frame = jnp.broadcast_to(frame, predictor_out.shape)
    return model.apply(variables, frame[:, None], predictor_out[:, None], method="joint_logits")[:, 0, 0]


def _primed(model, variables, blank, count):
    """Predictor output (count, D) and state after the blank token, as torchaudio's search starts."""
    return _predict(model, variables, jnp.full((count,), blank, jnp.int32), None)


def _extend_hashes(hashes, tokens):
    return hashes * jnp.asarray(_HASH_MULTIPLIERS) + (tokens.astype(jnp.uint32) + 1)[..., None]


# ------------------------------------------------------------------------------------------------------------
# Greedy search


def init_greedy_state(
    model, variables, batch_size: int, *, blank: int = -1, max_tokens: int = 1024
) -> GreedyState:
    """A fresh greedy state for ``batch_size`` streams: no tokens, predictor primed with the blank token."""
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("max_tokens", max_tokens)
    blank = _check_blank(model, blank)
    out, state = _primed(model, variables, blank, batch_size)
    return GreedyState(
        tokens=jnp.zeros((batch_size, max_tokens), jnp.int32),
        lengths=jnp.zeros((batch_size,), jnp.int32),
        predictor_out=out,
        predictor_state=state,
    )


def greedy_frames(
    model,
    variables,
    state: GreedyState,
    encodings: jax.Array,
    lengths: jax.Array,
    *,
    blank: int,
    max_symbols_per_step: int,
) -> GreedyState:
    """Greedy search over encoder frames, continuing from ``state`` (jit-compatible; ``blank`` normalised).

    Per frame: join, take the arg max; a non-blank token is emitted and fed to the predictor, up to
    ``max_symbols_per_step`` times; a blank ends the frame.

    Args:
        state: from ``init_greedy_state`` or a previous call.
        encodings: (B, T', D) transcriber output.
        lengths: (B,) valid frames per stream; frames at or beyond are skipped.
    """
    axes = _batch_axes(model.init_predictor_state)
    B, L = state.tokens.shape

    def frame(carry, inputs):
        encoding, valid = inputs

        def cond(c):
            n, active = c[0], c[1]
            return jnp.any(active) & (n < max_symbols_per_step)

        def body(c):
            n, active, tokens, emitted, out, pstate = c
            token = jnp.argmax(_logits(model, variables, encoding, out), axis=-1).astype(jnp.int32)
            emit = active & (token != blank)
            tokens = tokens.at[jnp.arange(B), jnp.where(emit, emitted, L)].set(token, mode="drop")
            emitted = emitted + emit

            def advance(_):
                new_out, new_state = _predict(model, variables, jnp.where(emit, token, blank), pstate)
                return jnp.where(emit[:, None], new_out, out), _select(emit, new_state, pstate, axes)

            out, pstate = jax.lax.cond(jnp.any(emit), advance, lambda _: (out, pstate), None)
            return n + 1, emit, tokens, emitted, out, pstate

        c = (jnp.int32(0), valid, carry.tokens, carry.lengths, carry.predictor_out, carry.predictor_state)
        _, _, tokens, emitted, out, pstate = jax.lax.while_loop(cond, body, c)
        return GreedyState(tokens, emitted, out, pstate), None

    valid = jnp.arange(encodings.shape[1])[:, None] < lengths[None, :]
    state, _ = jax.lax.scan(frame, state, (jnp.swapaxes(encodings, 0, 1), valid))
    return state


@functools.partial(jax.jit, static_argnames=("model",))
def _transcribe(model, variables, sources, source_lengths):
    """The offline transcriber, compiled once per model and input shape and shared by every search."""
    return model.apply(variables, sources, source_lengths, method="transcribe")


@functools.partial(jax.jit, static_argnames=("model", "blank", "max_symbols_per_step", "max_tokens"))
def _greedy_encoded(model, variables, encodings, lengths, *, blank, max_symbols_per_step, max_tokens):
    state = init_greedy_state(model, variables, encodings.shape[0], blank=blank, max_tokens=max_tokens)
    state = greedy_frames(
        model, variables, state, encodings, lengths, blank=blank, max_symbols_per_step=max_symbols_per_step
    )
    return state.tokens, state.lengths


def greedy_search(
    model,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    *,
    blank: int = -1,
    max_symbols_per_step: int = 10,
) -> list[list[int]]:
    """Greedy RNN-T decoding of a batch of utterances, one compiled program.

    Args:
        model: an ``RNNT`` (``streamformer.rnnt``); variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        blank: the blank token id (negative counts from the end; -1 = V - 1, torchaudio's convention).
        max_symbols_per_step: the most tokens emitted per encoder frame.

    Returns:
        The emitted token ids of each utterance (the initial blank excluded).
    """
    blank = _check_blank(model, blank)
    _checks.positive_int("max_symbols_per_step", max_symbols_per_step)
    sources, source_lengths = jnp.asarray(sources), jnp.asarray(source_lengths)
    _check_sources(model, sources, source_lengths)
    encodings, encoding_lengths = _transcribe(model, variables, sources, source_lengths.astype(jnp.int32))
    tokens, lengths = _greedy_encoded(
        model,
        variables,
        encodings,
        encoding_lengths,
        blank=blank,
        max_symbols_per_step=max_symbols_per_step,
        max_tokens=max(1, encodings.shape[1] * max_symbols_per_step),
    )
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    return [tokens[b, : lengths[b]].tolist() for b in range(len(lengths))]


# ------------------------------------------------------------------------------------------------------------
# Beam search


def init_beam_state(
    model, variables, batch_size: int, beam_width: int, *, blank: int = -1, max_tokens: int = 1024
) -> BeamState:
    """A fresh beam state for ``batch_size`` streams: one beam (the blank-primed predictor, score 0), the
    other K - 1 slots empty."""
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("max_tokens", max_tokens)
    blank = _check_blank(model, blank)
    K = _check_beam_width(model, beam_width)
    out, pstate = _primed(model, variables, blank, K)
    stack = lambda x: jnp.broadcast_to(x, (batch_size, *x.shape))  # noqa: E731
    return BeamState(
        tokens=jnp.zeros((batch_size, K, max_tokens), jnp.int32),
        lengths=jnp.zeros((batch_size, K), jnp.int32),
        scores=stack(jnp.full((K,), -jnp.inf, jnp.float32).at[0].set(0.0)),
        hashes=jnp.zeros((batch_size, K, 2), jnp.uint32),
        predictor_out=stack(out),
        predictor_state=jax.tree_util.tree_map(stack, pstate),
        overflow=jnp.zeros((batch_size,), bool),
    )


@flax.struct.dataclass
class _Pool:
    """One utterance's hypotheses of one frame: expansion j's A set lives in rows [j K, (j + 1) K).

    a_scores: (P,) score of each A hypothesis (-inf: empty row); b_scores: (P,) its score in B (-inf: not in
    B); hashes (P, 2); lengths (P,) emitted tokens; origins (P,) the beam it grew from at the frame's start;
    frame_tokens (P, E) tokens added during this frame (row j K + i has j); predictor_out (P, D);
    predictor_state (batch axis P).
    """

    a_scores: jax.Array
    b_scores: jax.Array
    hashes: jax.Array
    lengths: jax.Array
    origins: jax.Array
    frame_tokens: jax.Array
    predictor_out: jax.Array
    predictor_state: Any


def _beam_frame(model, variables, axes, beams, encoding, *, blank, temperature, step_max_tokens, capacity):
    """One frame of torchaudio's search for one utterance. ``beams`` holds one utterance's BeamState fields
    (no stream axis). Returns the new beams and whether the pool overflowed."""
    K, L = beams.tokens.shape
    E = capacity
    P = K * (E + 1)
    V = _num_symbols(model)
    rows = jnp.arange(P)

    def pad(x):
        return jnp.concatenate([x, jnp.zeros((P - K, *x.shape[1:]), x.dtype)])

    def pad_state(ax, x):
        zeros = jnp.zeros(x.shape[:ax] + (P - K,) + x.shape[ax + 1 :], x.dtype)
        return jnp.concatenate([x, zeros], axis=ax)

    pool = _Pool(
        a_scores=jnp.concatenate([beams.scores, jnp.full((P - K,), -jnp.inf, beams.scores.dtype)]),
        b_scores=jnp.full((P,), -jnp.inf, beams.scores.dtype),
        hashes=pad(beams.hashes),
        lengths=pad(beams.lengths),
        origins=pad(jnp.arange(K, dtype=jnp.int32)),
        frame_tokens=jnp.zeros((P, max(E, 1)), jnp.int32),
        predictor_out=pad(beams.predictor_out),
        predictor_state=jax.tree_util.tree_map(pad_state, axes, beams.predictor_state),
    )

    def log_probs(pool, j):
        out = jax.lax.dynamic_slice_in_dim(pool.predictor_out, j * K, K)
        return jax.nn.log_softmax(_logits(model, variables, encoding, out) / temperature, axis=-1)

    def expand(pool, j):
        """Steps 1-3 for A = rows of expansion j: returns the pool with B updated, and the next A as
        (parent rows (K,), tokens (K,), scores (K,) with -inf for none)."""
        probs = log_probs(pool, j)
        a_scores = jax.lax.dynamic_slice_in_dim(pool.a_scores, j * K, K)
        a_hashes = jax.lax.dynamic_slice_in_dim(pool.hashes, j * K, K)
        a_lengths = jax.lax.dynamic_slice_in_dim(pool.lengths, j * K, K)
        present = a_scores > -jnp.inf
        # Step 2: A hypotheses join B; an identical sequence already in B (from an earlier expansion) merges.
        blank_scores = a_scores + probs[:, blank]
        match = (
            (pool.hashes[None, :, 0] == a_hashes[:, None, 0])
            & (pool.hashes[None, :, 1] == a_hashes[:, None, 1])
            & (pool.lengths[None, :] == a_lengths[:, None])
            & (pool.b_scores[None, :] > -jnp.inf)
            & (rows[None, :] < j * K)
            & present[:, None]
        )
        merged_with = jnp.max(jnp.where(match, pool.b_scores[None, :], -jnp.inf), axis=1)
        new_b = jnp.where(jnp.any(match, axis=1), jnp.logaddexp(merged_with, blank_scores), blank_scores)
        b_scores = jnp.where(jnp.any(match, axis=0), -jnp.inf, pool.b_scores)
        b_scores = jax.lax.dynamic_update_slice_in_dim(
            b_scores, jnp.where(present, new_b, -jnp.inf), j * K, 0
        )
        pool = pool.replace(b_scores=b_scores)
        # Step 3: the K best non-blank extensions that beat B's K-th best score.
        kth_best_b = jax.lax.top_k(b_scores, K)[0][K - 1]
        candidates = jnp.where(
            present[:, None] & (jnp.arange(V) != blank)[None, :], a_scores[:, None] + probs, -jnp.inf
        )
        top_scores, top_index = jax.lax.top_k(candidates.reshape(-1), K)
        keep = (top_scores > kth_best_b) & (j < step_max_tokens)
        parents = j * K + (top_index // V).astype(jnp.int32)
        return pool, (parents, (top_index % V).astype(jnp.int32), jnp.where(keep, top_scores, -jnp.inf))

    def materialise(pool, pending, j):
        """Writes the next A (from ``expand``) into the rows of expansion j, running the predictor on it."""
        parents, tokens, scores = pending
        out, pstate = _predict(model, variables, tokens, _take(pool.predictor_state, axes, parents))
        frame_tokens = pool.frame_tokens[parents].at[:, j - 1].set(tokens)
        put = lambda x, new: jax.lax.dynamic_update_slice_in_dim(x, new.astype(x.dtype), j * K, 0)  # noqa: E731
        return _Pool(
            a_scores=put(pool.a_scores, scores),
            b_scores=pool.b_scores,
            hashes=put(pool.hashes, _extend_hashes(pool.hashes[parents], tokens)),
            lengths=put(pool.lengths, pool.lengths[parents] + 1),
            origins=put(pool.origins, pool.origins[parents]),
            frame_tokens=put(pool.frame_tokens, frame_tokens),
            predictor_out=put(pool.predictor_out, out),
            predictor_state=jax.tree_util.tree_map(
                lambda ax, x, new: jax.lax.dynamic_update_slice_in_dim(x, new, j * K, ax),
                axes,
                pool.predictor_state,
                pstate,
            ),
        )

    pool, pending = expand(pool, 0)

    def cond(c):
        _, pending, j = c
        return jnp.any(pending[2] > -jnp.inf) & (j <= E)

    def body(c):
        pool, pending, j = c
        pool = materialise(pool, pending, j)
        pool, pending = expand(pool, j)
        return pool, pending, j + 1

    if E > 0:
        pool, pending, _ = jax.lax.while_loop(cond, body, (pool, pending, jnp.int32(1)))
    overflow = jnp.any(pending[2] > -jnp.inf)

    # Step 4: the K best of B by score / (len(tokens) + 1), torchaudio's tokens counting the initial blank.
    keys = jnp.where(
        pool.b_scores > -jnp.inf, pool.b_scores / (pool.lengths + 2).astype(pool.b_scores.dtype), -jnp.inf
    )
    chosen_keys, chosen = jax.lax.top_k(keys, K)
    found = chosen_keys > -jnp.inf
    origins = pool.origins[chosen]
    start = beams.lengths[origins]
    added = jnp.arange(max(E, 1))[None, :]
    positions = jnp.where(added < (chosen // K)[:, None], start[:, None] + added, L)
    tokens = (
        beams.tokens[origins]
        .at[jnp.arange(K)[:, None], positions]
        .set(pool.frame_tokens[chosen], mode="drop")
    )
    new = BeamState(
        tokens=tokens,
        lengths=pool.lengths[chosen],
        scores=jnp.where(found, pool.b_scores[chosen], -jnp.inf),
        hashes=pool.hashes[chosen],
        predictor_out=pool.predictor_out[chosen],
        predictor_state=_take(pool.predictor_state, axes, chosen),
        overflow=beams.overflow | overflow,
    )
    return new


def beam_frames(
    model,
    variables,
    state: BeamState,
    encodings: jax.Array,
    lengths: jax.Array,
    *,
    blank: int,
    temperature: float | jax.Array = 1.0,
    step_max_tokens: int = 100,
    expansion_capacity: int = 8,
) -> BeamState:
    """torchaudio's RNN-T beam search over encoder frames, continuing from ``state`` (jit-compatible;
    ``blank`` normalised to [0, V)).

    Args:
        state: from ``init_beam_state`` or a previous call (K beams per stream).
        encodings: (B, T', D) transcriber output.
        lengths: (B,) valid frames per stream; frames at or beyond are skipped.
        temperature: divides the joiner logits before the log-softmax.
        step_max_tokens: the most expansions (tokens) per frame, as torchaudio.
        expansion_capacity: room for expansions per frame; a frame needing more sets ``state.overflow``.
            At least ``step_max_tokens`` never overflows.

    Returns:
        The state after the valid frames, beams sorted best first.
    """
    axes = _batch_axes(model.init_predictor_state)
    capacity = min(expansion_capacity, step_max_tokens)

    def search(beams, encodings, length):
        def frame(beams, inputs):
            encoding, valid = inputs
            new = _beam_frame(
                model,
                variables,
                axes,
                beams,
                encoding,
                blank=blank,
                temperature=temperature,
                step_max_tokens=step_max_tokens,
                capacity=capacity,
            )
            return jax.tree_util.tree_map(lambda a, b: jnp.where(valid, a, b), new, beams), None

        valid = jnp.arange(encodings.shape[0]) < length
        beams, _ = jax.lax.scan(frame, beams, (encodings, valid))
        return beams

    return jax.vmap(search)(state, encodings, lengths)


@functools.partial(
    jax.jit, static_argnames=("model", "beam_width", "blank", "step_max_tokens", "capacity", "max_tokens")
)
def _beam_encoded(
    model,
    variables,
    encodings,
    lengths,
    temperature,
    *,
    beam_width,
    blank,
    step_max_tokens,
    capacity,
    max_tokens,
):
    state = init_beam_state(
        model, variables, encodings.shape[0], beam_width, blank=blank, max_tokens=max_tokens
    )
    return beam_frames(
        model,
        variables,
        state,
        encodings,
        lengths,
        blank=blank,
        temperature=temperature,
        step_max_tokens=step_max_tokens,
        expansion_capacity=capacity,
    )


def _overflowed(state: BeamState) -> tuple[bool, bool]:
    """(pool overflow, token buffer overflow) anywhere in the batch."""
    used = np.asarray(state.lengths)[np.asarray(state.scores) > -np.inf]
    return bool(np.any(np.asarray(state.overflow))), bool(used.size and used.max() > state.tokens.shape[-1])


def _more_room(state: BeamState, capacity: int, max_tokens: int, pool_overflow: bool, step_max_tokens: int):
    """Room for a rerun after an overflow: 4x the expansions, tokens for the longest hypothesis seen (rounded
    up to a power of two, with margin)."""
    if pool_overflow:
        capacity = min(4 * capacity, max(step_max_tokens, 1))
    longest = int(np.asarray(state.lengths).max())
    if longest > max_tokens:
        max_tokens = 1 << (2 * longest - 1).bit_length()
    return capacity, max_tokens


def _hypotheses(state: BeamState) -> list[list[Hypothesis]]:
    tokens, lengths, scores = np.asarray(state.tokens), np.asarray(state.lengths), np.asarray(state.scores)
    return [
        [
            Hypothesis(tokens[b, k, : lengths[b, k]].tolist(), float(scores[b, k]))
            for k in range(scores.shape[1])
            if scores[b, k] > -np.inf
        ]
        for b in range(scores.shape[0])
    ]


def beam_search(
    model,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    *,
    beam_width: int,
    blank: int = -1,
    temperature: float = 1.0,
    step_max_tokens: int = 100,
    expansion_capacity: int = 8,
    max_tokens: int | None = None,
) -> list[list[Hypothesis]]:
    """torchaudio's RNNTBeamSearch (``forward``), batched over utterances and compiled into one program.

    Args:
        model: an ``RNNT`` (``streamformer.rnnt``); variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        beam_width: K, hypotheses kept per frame (1 <= K < V).
        blank: the blank token id (negative counts from the end; torchaudio's search treats the last token,
            -1, as blank).
        temperature: divides the joiner logits before the log-softmax.
        step_max_tokens: the most tokens emitted per encoder frame.
        expansion_capacity, max_tokens: initial room for expansions per frame and for tokens per hypothesis
            (default 2 T' + 16); the search runs again with twice the room when they overflow, so they only
            affect speed.

    Returns:
        For each utterance, up to K hypotheses, best first by torchaudio's key score / (len(tokens) + 1)
        (torchaudio's tokens counting the initial blank, which ``Hypothesis.tokens`` omits).
    """
    blank = _check_blank(model, blank)
    beam_width = _check_beam_width(model, beam_width)
    _checks.positive_int("step_max_tokens", step_max_tokens, minimum=0)
    _checks.positive_int("expansion_capacity", expansion_capacity)
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
    sources, source_lengths = jnp.asarray(sources), jnp.asarray(source_lengths)
    _check_sources(model, sources, source_lengths)
    encodings, encoding_lengths = _transcribe(model, variables, sources, source_lengths.astype(jnp.int32))
    if max_tokens is None:
        max_tokens = 2 * encodings.shape[1] + 16
    _checks.positive_int("max_tokens", max_tokens)
    capacity = min(expansion_capacity, max(step_max_tokens, 1))
    while True:
        state = _beam_encoded(
            model,
            variables,
            encodings,
            encoding_lengths,
            jnp.float32(temperature),
            beam_width=beam_width,
            blank=blank,
            step_max_tokens=step_max_tokens,
            capacity=capacity,
            max_tokens=max_tokens,
        )
        pool_overflow, token_overflow = _overflowed(state)
        if not (pool_overflow or token_overflow):
            return _hypotheses(state)
        capacity, max_tokens = _more_room(state, capacity, max_tokens, pool_overflow, step_max_tokens)


# ------------------------------------------------------------------------------------------------------------
# Streaming


@flax.struct.dataclass
class StreamingDecoderState:
    """A batch of independent streams: ``transcriber`` the model's transcriber state (``EmformerState``),
    ``search`` a ``GreedyState`` or ``BeamState``."""

    transcriber: Any
    search: Any


class StreamingDecoder:
    """Streaming RNN-T decoding of a batch of independent streams, one compiled step per segment: torchaudio's
    ``RNNTBeamSearch.infer`` (which carries the transcriber state and the hypotheses between calls), batched.

    Each stream is at its own position; a stream given no frames in a step (``segment_lengths`` <= R) is left
    as it was, and ``reset`` starts a new utterance in chosen slots.

    Example:
        >>> decoder = StreamingDecoder(model, variables, beam_width=4)
        >>> state = decoder.init(batch_size=8)
        >>> for chunk, chunk_lengths in segments:  # (8, S + R, F); (8,) valid frames, right context included
        ...     state = decoder.step(state, chunk, chunk_lengths)
        >>> hypotheses = decoder.result(state)         # 8 lists of Hypothesis, best first
        >>> state = decoder.reset(state, finished)     # finished (8,) bool: those slots start afresh

    Args:
        model, variables: an ``RNNT`` and its variables.
        beam_width: K for beam search (ignored when ``greedy``).
        greedy: greedy search instead of beam search (``result`` then gives token id lists).
        blank, temperature, step_max_tokens: as ``beam_search``; max_symbols_per_step: as ``greedy_search``.
        max_tokens: token slots per hypothesis (grown automatically when exceeded in beam search; greedy
            search stops recording past it and ``result`` raises).
        expansion_capacity: initial room for expansions per frame (grown automatically).
    """

    def __init__(
        self,
        model,
        variables,
        *,
        beam_width: int = 4,
        greedy: bool = False,
        blank: int = -1,
        temperature: float = 1.0,
        step_max_tokens: int = 100,
        max_symbols_per_step: int = 10,
        max_tokens: int = 1024,
        expansion_capacity: int = 8,
    ) -> None:
        self.model, self.variables, self.greedy = model, variables, bool(greedy)
        self.blank = _check_blank(model, blank)
        self.beam_width = 1 if greedy else _check_beam_width(model, beam_width)
        _checks.positive_int("step_max_tokens", step_max_tokens, minimum=0)
        _checks.positive_int("max_symbols_per_step", max_symbols_per_step)
        _checks.positive_int("max_tokens", max_tokens)
        _checks.positive_int("expansion_capacity", expansion_capacity)
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive number, got {temperature!r}")
        self.temperature, self.step_max_tokens = float(temperature), step_max_tokens
        self.max_symbols_per_step, self.max_tokens = max_symbols_per_step, max_tokens
        self.capacity = min(expansion_capacity, max(step_max_tokens, 1))
        self._steps, self._inits = {}, {}

    def init(self, batch_size: int) -> StreamingDecoderState:
        """Fresh state for ``batch_size`` streams."""
        _checks.positive_int("batch_size", batch_size)
        if batch_size not in self._inits:
            model, blank = self.model, self.blank

            def init(variables):
                if self.greedy:
                    search = init_greedy_state(
                        model, variables, batch_size, blank=blank, max_tokens=self.max_tokens
                    )
                else:
                    search = init_beam_state(
                        model, variables, batch_size, self.beam_width, blank=blank, max_tokens=self.max_tokens
                    )
                return StreamingDecoderState(
                    transcriber=model.init_transcriber_state(batch_size), search=search
                )

            self._inits[batch_size] = jax.jit(init)
        return self._inits[batch_size](self.variables)

    def reset(self, state: StreamingDecoderState, mask: jax.Array) -> StreamingDecoderState:
        """``state`` with the streams where ``mask`` (B,) is True started afresh (new utterances)."""
        B = jax.tree_util.tree_leaves(state.search)[0].shape[0]
        mask = jnp.asarray(mask)
        _checks.array_shape("mask", mask, (B,), "(B,) one flag per stream")
        fresh = self.init(B)
        if self.greedy:
            search_axes = GreedyState(0, 0, 0, _batch_axes(self.model.init_predictor_state))
        else:
            search_axes = jax.tree_util.tree_map(lambda _: 0, state.search)
        fresh = fresh.replace(search=fresh.search.replace(tokens=jnp.zeros_like(state.search.tokens)))
        transcriber_axes = _batch_axes(self.model.init_transcriber_state)
        return StreamingDecoderState(
            transcriber=_select(mask, fresh.transcriber, state.transcriber, transcriber_axes),
            search=_select(mask, fresh.search, state.search, search_axes),
        )

    def _step_fn(self, capacity: int):
        if capacity not in self._steps:
            model, blank = self.model, self.blank

            def step(variables, state, features, lengths, temperature):
                encodings, encoding_lengths, transcriber = model.apply(
                    variables, features, lengths, state.transcriber, method="transcribe_streaming"
                )
                encoding_lengths = jnp.clip(encoding_lengths, 0, encodings.shape[1])
                if self.greedy:
                    search = greedy_frames(
                        model,
                        variables,
                        state.search,
                        encodings,
                        encoding_lengths,
                        blank=blank,
                        max_symbols_per_step=self.max_symbols_per_step,
                    )
                else:
                    search = beam_frames(
                        model,
                        variables,
                        state.search,
                        encodings,
                        encoding_lengths,
                        blank=blank,
                        temperature=temperature,
                        step_max_tokens=self.step_max_tokens,
                        expansion_capacity=capacity,
                    )
                return StreamingDecoderState(transcriber=transcriber, search=search)

            self._steps[capacity] = jax.jit(step)
        return self._steps[capacity]

    def step(
        self, state: StreamingDecoderState, segment_features: jax.Array, segment_lengths: jax.Array
    ) -> StreamingDecoderState:
        """Decodes the next segment of every stream.

        Args:
            state: from ``init``, ``step`` or ``reset``.
            segment_features: (B, S + R, F) each stream's next S frames followed by R right-context frames.
            segment_lengths: (B,) valid frames in the chunk, right context included (torchaudio's convention):
                S + R for a full segment, fewer for a last partial one, 0 for a stream with nothing new.

        Returns:
            The new state.
        """
        S, R, F = self.model.segment_length, self.model.right_context_length, self.model.transcriber.input_dim
        features, lengths = jnp.asarray(segment_features), jnp.asarray(segment_lengths)
        _checks.array_shape("segment_features", features, (None, S + R, F), "(B, S + R, input_dim)")
        _checks.floating_array("segment_features", features)
        _checks.array_shape("segment_lengths", lengths, (features.shape[0],), "(B,) matching the batch")
        _checks.integer_array("segment_lengths", lengths)
        _checks.lengths_in_range("segment_lengths", lengths, 0, S + R)
        lengths = lengths.astype(jnp.int32)
        temperature = jnp.float32(self.temperature)
        new = self._step_fn(self.capacity)(self.variables, state, features, lengths, temperature)
        if self.greedy:
            return new
        while True:
            pool_overflow, token_overflow = _overflowed(new.search)
            if not (pool_overflow or token_overflow) or bool(np.any(np.asarray(state.search.overflow))):
                return new
            slots = state.search.tokens.shape[-1]
            self.capacity, wanted = _more_room(
                new.search, self.capacity, slots, pool_overflow, self.step_max_tokens
            )
            if wanted > slots:
                state = state.replace(
                    search=state.search.replace(
                        tokens=jnp.pad(state.search.tokens, ((0, 0), (0, 0), (0, wanted - slots)))
                    )
                )
            new = self._step_fn(self.capacity)(self.variables, state, features, lengths, temperature)

    def result(self, state: StreamingDecoderState) -> list:
        """Each stream's result so far: token id lists (greedy) or lists of ``Hypothesis``, best first."""
        search = state.search
        if self.greedy:
            tokens, lengths = np.asarray(search.tokens), np.asarray(search.lengths)
            if np.any(lengths > tokens.shape[1]):
                raise ValueError(
                    f"max_tokens: a stream emitted {int(lengths.max())} tokens, more than max_tokens = "
                    f"{tokens.shape[1]}; use a larger max_tokens"
                )
            return [tokens[b, : lengths[b]].tolist() for b in range(len(lengths))]
        return _hypotheses(search)
