"""The contract every RNN-T search meets, the result they share, and the one offline decode built on it.

A search (``GreedySearch``, ``BeamSearch``, ``ModifiedBeamSearch``, or your own) is a hashable object, a
frozen dataclass, so compiled programs take it as a static argument. It holds its settings (beam width,
temperature, ...) and works on a state pytree of its own:

- ``init(model, variables, batch_size, *, blank, max_tokens) -> state``: B fresh streams, the predictor primed
  with the blank token, ``max_tokens`` token slots per hypothesis;
- ``frames(model, variables, state, encodings, lengths, *, blank) -> state``: the search continued over
  encoder frames (B, T', D), frames at or beyond ``lengths`` (B,) skipped (jit-compatible; ``blank``
  normalised to [0, V));
- ``result(state) -> list[list[Hypothesis]]``: each stream's hypotheses so far, best first.

A search whose room (token slots, expansions per frame) can run out also says so and grows it:
``needs_more_room(state)`` after a step, ``grown(old, new)`` the state to rerun that step from; and
``token_room(frames)`` is the token slots an offline decode of T' frames starts with. Subclassing ``Search``
gives the defaults of a search that never runs out (no rerun, 2 T' + 16 slots). ``FrameSearch`` is the shape
all three searches share: a search written one encoder frame at a time (``frame``), scanned over the frames.

``StreamingDecoder`` runs ``init`` once and ``frames`` once per segment; ``decode`` (offline) runs the
transcriber, then ``frames`` once over all frames.

Letters: B streams or utterances, T' encoder frames, D encoding_dim, K hypotheses per stream, L token slots.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from . import _common

if TYPE_CHECKING:
    from .. import RNNT

__all__ = ["FrameSearch", "Hypothesis", "Search", "check_search", "decode"]


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    """One search result: ``tokens`` the emitted token ids (without the initial blank), ``score`` its total
    log-probability (torchaudio's ``hypo[3]``; for greedy search the log-probability of the chosen path, its
    tokens and the blanks that ended its frames), ``timestamps`` (when asked for) the encoder frame each
    token was emitted at, counted from the utterance's or stream's start."""

    tokens: list[int]
    score: float
    timestamps: list[int] | None = None


@runtime_checkable
class Search(Protocol):
    """The search contract (see the module docstring). Subclass it for the defaults of the last three
    methods: a search whose room never runs out."""

    def init(self, model: RNNT, variables, batch_size: int, *, blank: int, max_tokens: int) -> Any:
        """A fresh state for ``batch_size`` streams."""
        ...

    def frames(self, model: RNNT, variables, state: Any, encodings, lengths, *, blank: int) -> Any:
        """``state`` after the valid frames of ``encodings`` (B, T', D); ``lengths`` (B,)."""
        ...

    def result(self, state: Any) -> list[list[Hypothesis]]:
        """For each stream, its hypotheses best first."""
        ...

    def needs_more_room(self, state: Any) -> bool:
        """Whether the step that gave ``state`` ran out of room (its result would be inexact)."""
        return False

    def grown(self, old: Any, new: Any) -> Any:
        """``old`` with at least the room ``new`` has, and more where ``new`` ran out: the state to rerun a
        step from (``new`` being that step's result), or a fresh state matched to a running batch's room."""
        return old

    def token_room(self, frames: int) -> int:
        """Token slots per hypothesis an offline decode of ``frames`` encoder frames starts with."""
        return 2 * frames + 16


CONTRACT = ("init", "frames", "result", "needs_more_room", "grown", "token_room")


def check_search(search: Any) -> None:
    """Raises TypeError unless ``search`` has the methods of the ``Search`` contract."""
    missing = [name for name in CONTRACT if not callable(getattr(search, name, None))]
    if missing:
        raise TypeError(
            f"search: expected an object with the search contract ({', '.join(CONTRACT)}; subclass "
            f"streamformer.decoding.Search for the last three), got {type(search).__name__} without "
            f"{', '.join(missing)}"
        )
    try:
        hash(search)
    except TypeError:
        raise TypeError(
            f"search: expected a hashable object (a frozen dataclass: compiled programs take it as a static "
            f"argument), got an unhashable {type(search).__name__}"
        ) from None


class FrameSearch(Search):
    """A search written one encoder frame at a time: ``frame`` advances the streams whose frame is valid
    and leaves the others as they were; ``frames`` scans it over the frames."""

    def frame(self, model: RNNT, variables, state: Any, encoding: jax.Array, valid: jax.Array, *, blank: int):
        """``state`` after one encoder frame (B, D) of the streams where ``valid`` (B,) bool."""
        raise NotImplementedError(f"{type(self).__name__}.frame")

    def frames(self, model: RNNT, variables, state: Any, encodings, lengths, *, blank: int) -> Any:
        def step(state, inputs):
            encoding, valid = inputs
            return self.frame(model, variables, state, encoding, valid, blank=blank), None

        valid = jnp.arange(encodings.shape[1])[:, None] < lengths[None, :]
        state, _ = jax.lax.scan(step, state, (jnp.swapaxes(encodings, 0, 1), valid))
        return state


def hypotheses(
    tokens: np.ndarray,
    lengths: np.ndarray,
    scores: np.ndarray,
    timestamps: np.ndarray | None,
    *,
    rank=None,
) -> list[list[Hypothesis]]:
    """Hypothesis lists from a state's arrays: tokens and timestamps (B, K, L), lengths and scores (B, K);
    slots with score -inf are empty. In the state's order, or sorted by ``rank(hypothesis)`` (smallest
    first)."""
    results = []
    for b in range(scores.shape[0]):
        hyps = [
            Hypothesis(
                tokens[b, k, : lengths[b, k]].tolist(),
                float(scores[b, k]),
                None if timestamps is None else timestamps[b, k, : lengths[b, k]].tolist(),
            )
            for k in range(scores.shape[1])
            if scores[b, k] > -np.inf
        ]
        if rank is not None:
            hyps.sort(key=rank)
        results.append(hyps)
    return results


@functools.partial(jax.jit, static_argnames=("model", "search", "batch_size", "blank", "max_tokens"))
def _init(model, variables, search, *, batch_size, blank, max_tokens):
    return search.init(model, variables, batch_size, blank=blank, max_tokens=max_tokens)


@functools.partial(jax.jit, static_argnames=("model", "search", "blank"))
def _frames(model, variables, search, state, encodings, lengths, *, blank):
    return search.frames(model, variables, state, encodings, lengths, blank=blank)


def decode(
    model: RNNT,
    variables,
    sources: jax.Array,
    source_lengths: jax.Array,
    search: Search,
    *,
    blank: int = -1,
    max_tokens: int | None = None,
) -> list[list[Hypothesis]]:
    """Offline decoding of a batch of utterances with any search: the transcriber, then the search over all
    encoder frames, each one compiled program.

    Args:
        model: an ``RNNT``; variables: its variables.
        sources: (B, T + R, F) feature frames right-padded with the right context (as ``RNNT.transcribe``).
        source_lengths: (B,) valid frames per utterance, right context excluded.
        search: an object with the ``Search`` contract (``GreedySearch``, ``BeamSearch``, ...).
        blank: the blank token id (negative counts from the end; -1 = V - 1, torchaudio's convention).
        max_tokens: token slots per hypothesis (default ``search.token_room(T')``); a search that runs out
            reruns with more.

    Returns:
        For each utterance, its hypotheses best first (``search.result``).
    """
    check_search(search)
    blank = _common.check_blank(model, blank)
    sources, source_lengths = jnp.asarray(sources), jnp.asarray(source_lengths)
    _common.check_sources(model, sources, source_lengths)
    encodings, encoding_lengths = _common.transcribe(model, variables, sources, source_lengths)
    if max_tokens is None:
        max_tokens = search.token_room(encodings.shape[1])
    _checks.positive_int("max_tokens", max_tokens)
    start = _init(model, variables, search, batch_size=encodings.shape[0], blank=blank, max_tokens=max_tokens)
    while True:
        state = _frames(model, variables, search, start, encodings, encoding_lengths, blank=blank)
        if not search.needs_more_room(state):
            return search.result(state)
        start = search.grown(start, state)
