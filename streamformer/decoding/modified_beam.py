"""icefall's modified beam search (``modified_beam_search`` in icefall's ``beam_search.py``) on fixed-shape
arrays, batched over utterances: at most one non-blank token per frame and hypothesis.

Per encoder frame, for every utterance at once:

1. the joiner runs once on all B K hypotheses (one batched call), ``log_softmax`` gives (B, K, V) token
   log-probabilities, added to each hypothesis' score;
2. the K best of each utterance's K V candidates (hypothesis, token) are kept (``top_k``); a blank candidate
   keeps its hypothesis' tokens, a non-blank one appends the token, stamped with the frame;
3. candidates with equal token sequences (equal hashes and lengths) merge: the best keeps its tokens, frames
   and predictor state and gets the ``logaddexp`` of all their scores; the others leave (so fewer than K
   hypotheses may survive a frame, as in icefall);
4. the predictor runs once on all B K candidates, its output kept only where a token was appended.

Frames past an utterance's valid length leave its hypotheses as they were. Hypotheses come out best first by
score (total log-probability); ``length_norm=True`` ranks by score / number of tokens instead, icefall's
choice for its final best path (``get_most_probable(length_norm=True)``, ``len(ys)`` counting its
``context_size`` leading blanks; here the count is ``emitted + 1``, the single priming blank).

Unlike icefall's stateless predictor (its last ``context_size`` tokens), the predictor here is an LSTM: each
hypothesis carries its predictor state, and merged hypotheses share it (equal token sequences give equal
states).

Letters: B streams or utterances, K beam_width, T' encoder frames, D encoding_dim, V num_symbols, L max_tokens.
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

__all__ = ["ModifiedBeamSearch", "ModifiedBeamState", "modified_beam_search"]


@flax.struct.dataclass
class ModifiedBeamState:
    """Modified beam search state for B streams of K hypotheses each, best first by score.

    tokens: (B, K, L) int32 emitted tokens (without the initial blank); slots at or beyond ``lengths`` are
        meaningless.
    timestamps: (B, K, L) int32 the encoder frame (counted from the stream's start) each token was emitted at.
    lengths: (B, K) int32 tokens emitted (more than L means the buffer overflowed).
    scores: (B, K) float32 log-probability of each hypothesis; -inf marks an empty slot.
    hashes: (B, K, 2) uint32 two polynomial hashes of each token sequence (for merges).
    predictor_out: (B, K, D) predictor output after each hypothesis' last token.
    predictor_state: the model's predictor state, stream axis B first, the model's batch axis holding K.
    frames: (B,) int32 encoder frames decoded so far per stream.
    """

    tokens: jax.Array
    timestamps: jax.Array
    lengths: jax.Array
    scores: jax.Array
    hashes: jax.Array
    predictor_out: jax.Array
    predictor_state: Any = batch_field(0)
    frames: jax.Array = None

    @property
    def beam_width(self) -> int:
        return self.scores.shape[1]


def _flat(tree: Any, B: int, K: int) -> Any:
    """The (B, K)-stacked predictor state as the model's batch of B K (the model's own batch axis)."""

    def merge(axis, x):
        x = jnp.moveaxis(x, 0, axis)  # (..., B, K, ...) with B at the model's batch axis
        return x.reshape(x.shape[:axis] + (B * K,) + x.shape[axis + 2 :])

    return jax.tree_util.tree_map(merge, batch_axes(tree), tree)


def _unflat(tree: Any, B: int, K: int) -> Any:
    def split(axis, x):
        x = x.reshape(x.shape[:axis] + (B, K) + x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    return jax.tree_util.tree_map(split, batch_axes(tree), tree)


def _frame(model: RNNT, variables, state: ModifiedBeamState, encoding, valid, *, blank: int, temperature):
    """Steps 1-4 for one encoder frame: encoding (B, D), valid (B,) bool."""
    B, K, L = state.tokens.shape
    V = model.num_symbols
    rows = jnp.arange(B)[:, None]
    # 1. One joiner call for all B K hypotheses.
    frame = jnp.broadcast_to(encoding[:, None, :], state.predictor_out.shape).reshape(B * K, -1)
    logits = _common.logits(model, variables, frame, state.predictor_out.reshape(B * K, -1))
    log_probs = jax.nn.log_softmax(logits / temperature, axis=-1).reshape(B, K, V)
    candidates = jnp.where(
        (state.scores > -jnp.inf)[:, :, None], state.scores[:, :, None] + log_probs, -jnp.inf
    )
    # 2. The K best (hypothesis, token) pairs of each utterance.
    top_scores, top_index = jax.lax.top_k(candidates.reshape(B, K * V), K)
    parents = (top_index // V).astype(jnp.int32)
    tokens = (top_index % V).astype(jnp.int32)
    emit = (tokens != blank) & (top_scores > -jnp.inf)
    parent_lengths = state.lengths[rows, parents]
    hashes = state.hashes[rows, parents]
    hashes = jnp.where(emit[..., None], _common.extend_hashes(hashes, tokens), hashes)
    lengths = parent_lengths + emit
    # 3. Equal sequences merge into the first (best) of them.
    present = top_scores > -jnp.inf
    same = (
        jnp.all(hashes[:, :, None, :] == hashes[:, None, :, :], axis=-1)
        & (lengths[:, :, None] == lengths[:, None, :])
        & present[:, :, None]
        & present[:, None, :]
    )
    earlier = jnp.tril(jnp.ones((K, K), bool), k=-1)[None]  # earlier[i, j]: j < i
    first = present & ~jnp.any(same & earlier, axis=-1)
    merged = jax.nn.logsumexp(jnp.where(same, top_scores[:, None, :], -jnp.inf), axis=-1)
    scores = jnp.where(first, merged, -jnp.inf)
    # Buffers: the parent's tokens and frames, plus the new token where one was emitted.
    position = jnp.where(emit, parent_lengths, L)
    new_tokens = state.tokens[rows, parents].at[rows, jnp.arange(K)[None], position].set(tokens, mode="drop")
    stamp = jnp.broadcast_to(state.frames[:, None], (B, K))
    new_stamps = (
        state.timestamps[rows, parents].at[rows, jnp.arange(K)[None], position].set(stamp, mode="drop")
    )
    # 4. One predictor call for all B K candidates, kept where a token was appended.
    parent_index = (rows * K + parents).reshape(-1)
    parent_state = take_streams(_flat(state.predictor_state, B, K), parent_index)
    parent_out = state.predictor_out[rows, parents]

    def advance(_):
        out, pstate = _common.predict(
            model, variables, jnp.where(emit, tokens, blank).reshape(-1), parent_state
        )
        flat_emit = emit.reshape(-1)
        pstate = select_streams(flat_emit, pstate, parent_state)
        return jnp.where(emit[..., None], out.reshape(B, K, -1), parent_out), pstate

    out, pstate = jax.lax.cond(
        jnp.any(emit & valid[:, None]), advance, lambda _: (parent_out, parent_state), None
    )
    # Best first again (merging may have emptied slots between survivors).
    order = jnp.argsort(-scores, axis=-1, stable=True)
    pick = lambda x: jnp.take_along_axis(x, order.reshape(order.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa: E731
    flat_order = (rows * K + order).reshape(-1)
    new = ModifiedBeamState(
        tokens=pick(new_tokens),
        timestamps=pick(new_stamps),
        lengths=pick(lengths),
        scores=pick(scores),
        hashes=pick(hashes),
        predictor_out=pick(out),
        predictor_state=_unflat(take_streams(pstate, flat_order), B, K),
        frames=state.frames + 1,
    )
    return select_streams(valid, new, state)


@dataclasses.dataclass(frozen=True)
class ModifiedBeamSearch(FrameSearch):
    """icefall's modified beam search (a ``Search``).

    beam_width: K (1 <= K < V). temperature: divides the joiner logits. length_norm: rank the results by
    score / (tokens + 1) instead of score (it only shapes ``result``: the compiled search is the same
    either way).
    """

    beam_width: int = 4
    temperature: float = 1.0
    length_norm: bool = dataclasses.field(default=False, compare=False)

    def __post_init__(self):
        _checks.positive_int("beam_width", self.beam_width)
        _common.check_temperature(self.temperature)

    def init(
        self, model: RNNT, variables, batch_size: int, *, blank: int, max_tokens: int
    ) -> ModifiedBeamState:
        """One hypothesis (the blank-primed predictor, score 0), the other K - 1 slots empty."""
        return ModifiedBeamState(
            **_common.fresh_hypotheses(model, variables, batch_size, self.beam_width, blank, max_tokens)
        )

    def frame(
        self, model: RNNT, variables, state: ModifiedBeamState, encoding, valid, *, blank: int
    ) -> ModifiedBeamState:
        return _frame(
            model, variables, state, encoding, valid, blank=blank, temperature=jnp.float32(self.temperature)
        )

    def token_room(self, frames: int) -> int:
        """Room for every token: at most one per frame, so an offline decode never reruns."""
        return max(1, frames)

    def needs_more_room(self, state: ModifiedBeamState) -> bool:
        """Whether a hypothesis overflowed its token buffer."""
        return _common.token_overflow(state)

    def grown(self, old: ModifiedBeamState, new: ModifiedBeamState) -> ModifiedBeamState:
        """``old`` with at least ``new``'s token slots, more where ``new`` overflowed them."""
        return _common.grown_token_slots(old, new)

    def result(self, state: ModifiedBeamState) -> list[list[Hypothesis]]:
        """For each stream, its hypotheses best first (with ``timestamps``)."""
        rank = (lambda h: -h.score / (len(h.tokens) + 1)) if self.length_norm else None
        return hypotheses(
            np.asarray(state.tokens),
            np.asarray(state.lengths),
            np.asarray(state.scores),
            np.asarray(state.timestamps),
            rank=rank,
        )


def modified_beam_search(
    model: RNNT,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    *,
    beam_width: int,
    blank: int = -1,
    temperature: float = 1.0,
    length_norm: bool = False,
) -> list[list[Hypothesis]]:
    """icefall's modified beam search, batched over utterances (``decode`` with ``ModifiedBeamSearch``).

    Args:
        model: an ``RNNT``; variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        beam_width: K, hypotheses kept per frame (1 <= K < V).
        blank: the blank token id (negative counts from the end).
        temperature: divides the joiner logits before the log-softmax.
        length_norm: rank by score / (tokens + 1) (icefall's final choice) instead of by score.

    Returns:
        For each utterance, up to K hypotheses, best first, each with ``timestamps``: the encoder frame of
        each token (at most one token per frame, so they increase strictly).
    """
    _common.check_blank(model, blank)
    search = ModifiedBeamSearch(
        _common.check_beam_width(model, beam_width), _common.check_temperature(temperature), length_norm
    )
    return decode(model, variables, sources, source_lengths, search, blank=blank)
