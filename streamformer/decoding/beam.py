"""torchaudio's RNN-T beam search (``RNNTBeamSearch``) on fixed-shape arrays, batched over utterances.

- a hypothesis is a row of padded arrays: emitted tokens (a buffer of ``max_tokens`` slots), their count, the
  score, two 32-bit polynomial hashes of the token sequence (merging identical sequences compares hashes and
  lengths instead of Python strings), the predictor output and the predictor state;
- the beams of an utterance live in ``beam_width`` slots; empty slots have score -inf;
- a frame is a bounded ``lax.while_loop`` over torchaudio's inner loop, written for one utterance and
  ``vmap``-ed over the streams; the frames are a ``lax.scan`` (``FrameSearch``).

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

Exactness needs room: the hypotheses A of one frame are kept in a pool of ``beam_width * (expansion_capacity
+ 1)`` rows, and tokens in ``max_tokens`` slots. Both are part of the state (``BeamState.expansion_capacity``
is static, the token buffer's size is its shape). A search that needs more flags ``overflow``, and
``BeamSearch.grown`` gives the state more room for a rerun, so results never silently differ from
torchaudio's.

Letters: B streams or utterances, K beam_width, T' encoder frames, D encoding_dim, V num_symbols, L max_tokens,
E expansion capacity, P = K (E + 1) pool rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import RNNT, _checks
from ..state import batch_axes, batch_field, select_streams, take_streams
from . import _common
from .search import FrameSearch, Hypothesis, decode, hypotheses

__all__ = ["BeamSearch", "BeamState", "beam_search"]


@flax.struct.dataclass
class BeamState:
    """Beam search state for B streams of K beams each, best beam first (by torchaudio's ranking key).

    tokens: (B, K, L) int32 emitted tokens (without the initial blank); slots at or beyond ``lengths`` are
        meaningless.
    lengths: (B, K) int32 tokens emitted (more than L means the buffer overflowed).
    scores: (B, K) float32 log-probability of each beam; -inf marks an empty beam slot.
    hashes: (B, K, 2) uint32 two polynomial hashes of each beam's token sequence (for merges).
    predictor_out: (B, K, D) predictor output after each beam's last token.
    predictor_state: the model's predictor state with the stream axis B first and the model's batch axis
        holding the K beams (e.g. ``PredictorState.hidden`` (B, num_lstm_layers, K, H)).
    overflow: (B,) bool a frame needed more than ``expansion_capacity`` expansions (results inexact).
    expansion_capacity: (static) E, room for expansions per frame.
    timestamps: (B, K, L) int32 the encoder frame (counted from the stream's start) of each token.
    frames: (B,) int32 encoder frames decoded so far.
    """

    tokens: jax.Array
    lengths: jax.Array
    scores: jax.Array
    hashes: jax.Array
    predictor_out: jax.Array
    predictor_state: Any = batch_field(0)
    overflow: jax.Array = None
    expansion_capacity: int = flax.struct.field(pytree_node=False, default=8)
    timestamps: jax.Array = None
    frames: jax.Array = None

    @property
    def beam_width(self) -> int:
        return self.scores.shape[1]


# ------------------------------------------------------------------------------------------------------------
# One frame of one utterance


@flax.struct.dataclass
class _Pool:
    """One utterance's hypotheses of one frame: expansion j's A set lives in rows [j K, (j + 1) K).

    a_scores: (P,) score of each A hypothesis (-inf: empty row); b_scores: (P,) its score in B (-inf: not in
    B); hashes (P, 2); lengths (P,) emitted tokens; origins (P,) the beam it grew from at the frame's start;
    frame_tokens (P, E) tokens added during this frame (row j K + i has j); predictor_out (P, D);
    predictor_state (the predictor's batch axis holding P).
    """

    a_scores: jax.Array
    b_scores: jax.Array
    hashes: jax.Array
    lengths: jax.Array
    origins: jax.Array
    frame_tokens: jax.Array
    predictor_out: jax.Array
    predictor_state: Any


@dataclasses.dataclass(frozen=True)
class _Frame:
    """The search of one encoder frame for one utterance (steps 1-4 of the module docstring)."""

    model: RNNT
    variables: Any
    encoding: jax.Array  # (D,)
    blank: int
    temperature: Any
    step_max_tokens: int
    beam_width: int  # K
    capacity: int  # E

    @property
    def rows(self) -> int:
        return self.beam_width * (self.capacity + 1)

    def start(self, beams: BeamState) -> _Pool:
        """The pool with the frame's first A set (the beams) in rows [0, K)."""
        K, P = self.beam_width, self.rows

        def pad(axis, x):
            zeros = jnp.zeros(x.shape[:axis] + (P - K,) + x.shape[axis + 1 :], x.dtype)
            return jnp.concatenate([x, zeros], axis=axis)

        return _Pool(
            a_scores=jnp.concatenate([beams.scores, jnp.full((P - K,), -jnp.inf, beams.scores.dtype)]),
            b_scores=jnp.full((P,), -jnp.inf, beams.scores.dtype),
            hashes=pad(0, beams.hashes),
            lengths=pad(0, beams.lengths),
            origins=pad(0, jnp.arange(K, dtype=jnp.int32)),
            frame_tokens=jnp.zeros((P, max(self.capacity, 1)), jnp.int32),
            predictor_out=pad(0, beams.predictor_out),
            predictor_state=jax.tree_util.tree_map(
                pad, batch_axes(beams.predictor_state), beams.predictor_state
            ),
        )

    def _slice(self, x: jax.Array, j) -> jax.Array:
        return jax.lax.dynamic_slice_in_dim(x, j * self.beam_width, self.beam_width)

    def expand(self, pool: _Pool, j):
        """Steps 1-3 for A = rows of expansion j: returns the pool with B updated, and the next A as
        (parent rows (K,), tokens (K,), scores (K,) with -inf for none)."""
        K, V, blank = self.beam_width, self.model.num_symbols, self.blank
        logits = _common.logits(self.model, self.variables, self.encoding, self._slice(pool.predictor_out, j))
        probs = jax.nn.log_softmax(logits / self.temperature, axis=-1)
        a_scores, a_hashes, a_lengths = (
            self._slice(x, j) for x in (pool.a_scores, pool.hashes, pool.lengths)
        )
        present = a_scores > -jnp.inf
        # Step 2: A hypotheses join B; an identical sequence already in B (from an earlier expansion) merges.
        blank_scores = a_scores + probs[:, blank]
        match = (
            jnp.all(pool.hashes[None, :, :] == a_hashes[:, None, :], axis=-1)
            & (pool.lengths[None, :] == a_lengths[:, None])
            & (pool.b_scores[None, :] > -jnp.inf)
            & (jnp.arange(self.rows)[None, :] < j * K)
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
        keep = (top_scores > kth_best_b) & (j < self.step_max_tokens)
        parents = j * K + (top_index // V).astype(jnp.int32)
        return pool, (parents, (top_index % V).astype(jnp.int32), jnp.where(keep, top_scores, -jnp.inf))

    def materialise(self, pool: _Pool, pending, j) -> _Pool:
        """Writes the next A (from ``expand``) into the rows of expansion j, running the predictor on it."""
        parents, tokens, scores = pending
        K = self.beam_width
        out, pstate = _common.predict(
            self.model, self.variables, tokens, take_streams(pool.predictor_state, parents)
        )
        frame_tokens = pool.frame_tokens[parents].at[:, j - 1].set(tokens)
        put = lambda x, new: jax.lax.dynamic_update_slice_in_dim(x, new.astype(x.dtype), j * K, 0)  # noqa: E731
        return _Pool(
            a_scores=put(pool.a_scores, scores),
            b_scores=pool.b_scores,
            hashes=put(pool.hashes, _common.extend_hashes(pool.hashes[parents], tokens)),
            lengths=put(pool.lengths, pool.lengths[parents] + 1),
            origins=put(pool.origins, pool.origins[parents]),
            frame_tokens=put(pool.frame_tokens, frame_tokens),
            predictor_out=put(pool.predictor_out, out),
            predictor_state=jax.tree_util.tree_map(
                lambda axis, x, new: jax.lax.dynamic_update_slice_in_dim(x, new, j * K, axis),
                batch_axes(pool.predictor_state),
                pool.predictor_state,
                pstate,
            ),
        )

    def finish(self, beams: BeamState, pool: _Pool, overflow) -> BeamState:
        """Step 4: the K best of B by score / (len(tokens) + 1), torchaudio's tokens counting the initial
        blank; their token buffers are the origin beam's plus the tokens added in this frame."""
        K, L = beams.tokens.shape
        keys = jnp.where(
            pool.b_scores > -jnp.inf, pool.b_scores / (pool.lengths + 2).astype(pool.b_scores.dtype), -jnp.inf
        )
        chosen_keys, chosen = jax.lax.top_k(keys, K)
        found = chosen_keys > -jnp.inf
        origins = pool.origins[chosen]
        start = beams.lengths[origins]
        added = jnp.arange(max(self.capacity, 1))[None, :]
        positions = jnp.where(added < (chosen // K)[:, None], start[:, None] + added, L)
        tokens = (
            beams.tokens[origins]
            .at[jnp.arange(K)[:, None], positions]
            .set(pool.frame_tokens[chosen], mode="drop")
        )
        stamps = (
            beams.timestamps[origins].at[jnp.arange(K)[:, None], positions].set(beams.frames, mode="drop")
        )
        return beams.replace(
            tokens=tokens,
            timestamps=stamps,
            frames=beams.frames + 1,
            lengths=pool.lengths[chosen],
            scores=jnp.where(found, pool.b_scores[chosen], -jnp.inf),
            hashes=pool.hashes[chosen],
            predictor_out=pool.predictor_out[chosen],
            predictor_state=take_streams(pool.predictor_state, chosen),
            overflow=beams.overflow | overflow,
        )

    def __call__(self, beams: BeamState) -> BeamState:
        pool, pending = self.expand(self.start(beams), 0)

        def unfinished(carry):
            _, pending, j = carry
            return jnp.any(pending[2] > -jnp.inf) & (j <= self.capacity)

        def next_expansion(carry):
            pool, pending, j = carry
            pool, pending = self.expand(self.materialise(pool, pending, j), j)
            return pool, pending, j + 1

        if self.capacity > 0:
            pool, pending, _ = jax.lax.while_loop(unfinished, next_expansion, (pool, pending, jnp.int32(1)))
        return self.finish(beams, pool, jnp.any(pending[2] > -jnp.inf))


# ------------------------------------------------------------------------------------------------------------
# The search object and the offline search


@dataclasses.dataclass(frozen=True)
class BeamSearch(FrameSearch):
    """torchaudio's beam search (a ``Search``).

    beam_width: K (1 <= K < V). temperature: divides the joiner logits. step_max_tokens: the most tokens
    per frame. expansion_capacity: initial room for expansions per frame (grown when a frame needs more).
    return_timestamps: fill ``Hypothesis.timestamps`` (it only shapes ``result``: the compiled search is the
    same either way).
    """

    beam_width: int = 4
    temperature: float = 1.0
    step_max_tokens: int = 100
    expansion_capacity: int = 8
    return_timestamps: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self):
        _checks.positive_int("beam_width", self.beam_width)
        _common.check_temperature(self.temperature)
        _checks.positive_int("step_max_tokens", self.step_max_tokens, minimum=0)
        _checks.positive_int("expansion_capacity", self.expansion_capacity)

    def init(self, model: RNNT, variables, batch_size: int, *, blank: int, max_tokens: int) -> BeamState:
        """One beam (the blank-primed predictor, score 0), the other K - 1 slots empty; room for
        ``expansion_capacity`` expansions per frame (no more than ``step_max_tokens`` can use)."""
        fields = _common.fresh_hypotheses(model, variables, batch_size, self.beam_width, blank, max_tokens)
        return BeamState(
            **fields,
            overflow=jnp.zeros((batch_size,), bool),
            expansion_capacity=min(self.expansion_capacity, max(self.step_max_tokens, 1)),
        )

    def frame(self, model: RNNT, variables, state: BeamState, encoding, valid, *, blank: int) -> BeamState:
        """Steps 1-4 of the module docstring for each stream (a ``vmap`` of one utterance's frame); a frame
        needing more than ``state.expansion_capacity`` expansions sets ``state.overflow``."""
        temperature, capacity = (
            jnp.float32(self.temperature),
            min(state.expansion_capacity, self.step_max_tokens),
        )

        def one_stream(beams: BeamState, encoding: jax.Array) -> BeamState:
            return _Frame(
                model,
                variables,
                encoding,
                blank,
                temperature,
                self.step_max_tokens,
                state.beam_width,
                capacity,
            )(beams)

        new = jax.vmap(one_stream)(state, encoding)
        return select_streams(valid, new, state)

    def needs_more_room(self, state: BeamState) -> bool:
        """Whether a frame overflowed the pool or a beam overflowed its token buffer."""
        return bool(np.any(np.asarray(state.overflow))) or _common.token_overflow(state)

    def grown(self, old: BeamState, new: BeamState) -> BeamState:
        """``old`` with at least ``new``'s room, and more where ``new`` overflowed: 4x the expansions,
        tokens for the longest hypothesis seen (rounded up to a power of two, with margin)."""
        capacity = max(old.expansion_capacity, new.expansion_capacity)
        if np.any(np.asarray(new.overflow)):
            capacity = min(4 * capacity, max(self.step_max_tokens, 1))
        return _common.grown_token_slots(old, new).replace(expansion_capacity=capacity)

    def result(self, state: BeamState) -> list[list[Hypothesis]]:
        """For each stream, its hypotheses best first (with ``timestamps`` when ``return_timestamps``)."""
        stamps = np.asarray(state.timestamps) if self.return_timestamps else None
        return hypotheses(
            np.asarray(state.tokens), np.asarray(state.lengths), np.asarray(state.scores), stamps
        )


def beam_search(
    model: RNNT,
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
    return_timestamps: bool = False,
) -> list[list[Hypothesis]]:
    """torchaudio's RNNTBeamSearch (``forward``), batched over utterances (``decode`` with ``BeamSearch``).

    Args:
        model: an ``RNNT``; variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        beam_width: K, hypotheses kept per frame (1 <= K < V).
        blank: the blank token id (negative counts from the end; torchaudio's search treats the last token,
            -1, as blank).
        temperature: divides the joiner logits before the log-softmax.
        step_max_tokens: the most tokens emitted per encoder frame.
        expansion_capacity, max_tokens: initial room for expansions per frame and for tokens per hypothesis
            (default 2 T' + 16); the search runs again with more room when they overflow, so they only
            affect speed.
        return_timestamps: fill each ``Hypothesis.timestamps`` with its tokens' encoder frames.

    Returns:
        For each utterance, up to K hypotheses, best first by torchaudio's key score / (len(tokens) + 1)
        (torchaudio's tokens counting the initial blank, which ``Hypothesis.tokens`` omits).
    """
    _common.check_blank(model, blank)
    search = BeamSearch(
        _common.check_beam_width(model, beam_width),
        _common.check_temperature(temperature),
        step_max_tokens,
        expansion_capacity,
        return_timestamps=bool(return_timestamps),
    )
    return decode(model, variables, sources, source_lengths, search, blank=blank, max_tokens=max_tokens)
