"""Streaming RNN-T decoding of a batch of independent streams, one compiled step per segment, with any search
that meets the ``Search`` contract."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from .. import RNNT, _checks
from ..state import select_streams
from . import _common
from .search import Hypothesis, Search, check_search

__all__ = ["StreamingDecoder", "StreamingDecoderState"]


@flax.struct.dataclass
class StreamingDecoderState:
    """A batch of independent streams: ``transcriber`` the model's transcriber state (``EmformerState``),
    ``search`` the search's state (``GreedyState``, ``BeamState``, ``ModifiedBeamState``, ...)."""

    transcriber: Any
    search: Any


class StreamingDecoder:
    """Streaming RNN-T decoding of a batch of independent streams, one compiled step per segment: torchaudio's
    ``RNNTBeamSearch.infer`` (which carries the transcriber state and the hypotheses between calls), batched.

    Each stream is at its own position; a stream given no frames in a step (``segment_lengths`` <= R) is left
    as it was, and ``reset`` starts a new utterance in chosen slots. The decoder holds no mutable state: the
    room a beam search needs (grown after an overflow) lives in the state it returns.

    Example:
        >>> decoder = StreamingDecoder(model, variables, search=BeamSearch(beam_width=4))
        >>> state = decoder.init(batch_size=8)
        >>> for chunk, chunk_lengths in model.layout.iter_chunks(features, lengths):  # (8, S + R, F); (8,)
        ...     state = decoder.step(state, chunk, chunk_lengths)
        >>> hypotheses = decoder.result(state)         # 8 lists of Hypothesis, best first
        >>> state = decoder.reset(state, finished)     # finished (8,) bool: those slots start afresh

    Args:
        model, variables: an ``RNNT`` and its variables.
        search: any object with the ``Search`` contract (``GreedySearch``, ``BeamSearch``,
            ``ModifiedBeamSearch``, or your own), chosen once.
        blank: the blank token id (negative counts from the end).
        max_tokens: token slots per hypothesis to start with (a search that grows its room, as beam search
            does, grows them when exceeded; greedy search stops recording past them and ``result`` raises).
    """

    def __init__(
        self, model: RNNT, variables, *, search: Search, blank: int = -1, max_tokens: int = 1024
    ) -> None:
        check_search(search)
        _checks.positive_int("max_tokens", max_tokens)
        self.model, self.variables, self.search = model, variables, search
        self.blank = _common.check_blank(model, blank)
        self.max_tokens = max_tokens
        self._init = jax.jit(self._init_impl, static_argnums=(1,))
        self._step = jax.jit(self._step_impl)

    def _init_impl(self, variables, batch_size: int) -> StreamingDecoderState:
        search = self.search.init(
            self.model, variables, batch_size, blank=self.blank, max_tokens=self.max_tokens
        )
        return StreamingDecoderState(self.model.init_transcriber_state(batch_size), search)

    def _step_impl(self, variables, state: StreamingDecoderState, features, lengths) -> StreamingDecoderState:
        encodings, encoding_lengths, transcriber = self.model.apply(
            variables, features, lengths, state.transcriber, method=RNNT.transcribe_streaming
        )
        encoding_lengths = jnp.clip(encoding_lengths, 0, encodings.shape[1])
        search = self.search.frames(
            self.model, variables, state.search, encodings, encoding_lengths, blank=self.blank
        )
        return StreamingDecoderState(transcriber=transcriber, search=search)

    def init(self, batch_size: int) -> StreamingDecoderState:
        """Fresh state for ``batch_size`` streams."""
        _checks.positive_int("batch_size", batch_size)
        return self._init(self.variables, batch_size)

    def reset(
        self, state: StreamingDecoderState, mask: jax.Array, *, reset_transcriber: bool = True
    ) -> StreamingDecoderState:
        """``state`` with the streams where ``mask`` (B,) is True started afresh (new utterances); with
        ``reset_transcriber=False`` only their search state (an endpoint inside a continuing stream)."""
        B = state.transcriber.batch_size
        mask = jnp.asarray(mask)
        _checks.array_shape("mask", mask, (B,), "(B,) one flag per stream")
        fresh = self._init(self.variables, B)
        # Only the contents start afresh; the running state's room (token slots, expansion capacity) stays.
        fresh = fresh.replace(search=self.search.grown(fresh.search, state.search))
        if not reset_transcriber:
            fresh = fresh.replace(transcriber=state.transcriber)
        return select_streams(mask, fresh, state)

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
        features, lengths = _common.check_chunk(self.model, segment_features, segment_lengths)
        new = self._step(self.variables, state, features, lengths)
        # A search that ran out of room reruns the step with more (unless it had run out before: an
        # overflow that stays in the state, which a rerun cannot undo).
        while self.search.needs_more_room(new.search) and not self.search.needs_more_room(state.search):
            state = state.replace(search=self.search.grown(state.search, new.search))
            new = self._step(self.variables, state, features, lengths)
        return new

    def result(self, state: StreamingDecoderState) -> list[list[Hypothesis]]:
        """Each stream's hypotheses so far, best first (greedy search: one)."""
        return self.search.result(state.search)
