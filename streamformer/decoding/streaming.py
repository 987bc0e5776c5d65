"""Streaming RNN-T decoding of a batch of independent streams, one compiled step per segment, and the chunk
feeder that cuts whole utterances into the chunks live streams deliver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from ..layout import SegmentLayout
from ..rnnt import RNNT
from ..state import select_streams
from . import _common
from .beam import BeamSearch, BeamState
from .greedy import GreedySearch
from .modified_beam import ModifiedBeamSearch

__all__ = ["StreamingDecoder", "StreamingDecoderState", "stream_segments"]


@flax.struct.dataclass
class StreamingDecoderState:
    """A batch of independent streams: ``transcriber`` the model's transcriber state (``EmformerState``),
    ``search`` the search's state (``GreedyState``, ``BeamState`` or ``ModifiedBeamState``)."""

    transcriber: Any
    search: Any


def stream_segments(
    features: np.ndarray, lengths: np.ndarray, segment_length: int, right_context_length: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (chunk (B, S + R, F), chunk_lengths (B,)) as live streams deliver them: chunk i holds frames
    [i S, i S + S) and then the R look-ahead frames that follow the stream's valid frames; its length counts
    both, 0 once a stream has nothing new (``StreamingDecoder.step``'s convention). Frames past ``features``'
    end count as zeros. (``SegmentLayout.iter_chunks``; ``model.layout`` gives a model's S and R.)"""
    yield from SegmentLayout(segment_length, right_context_length).iter_chunks(features, lengths)


class StreamingDecoder:
    """Streaming RNN-T decoding of a batch of independent streams, one compiled step per segment: torchaudio's
    ``RNNTBeamSearch.infer`` (which carries the transcriber state and the hypotheses between calls), batched.

    Each stream is at its own position; a stream given no frames in a step (``segment_lengths`` <= R) is left
    as it was, and ``reset`` starts a new utterance in chosen slots. The decoder holds no mutable state: the
    room a beam search needs (grown after an overflow) lives in the state it returns.

    Example:
        >>> decoder = StreamingDecoder(model, variables, search=BeamSearch(beam_width=4))
        >>> state = decoder.init(batch_size=8)
        >>> for chunk, chunk_lengths in segments:  # (8, S + R, F); (8,) valid frames, right context included
        ...     state = decoder.step(state, chunk, chunk_lengths)
        >>> hypotheses = decoder.result(state)         # 8 lists of Hypothesis, best first
        >>> state = decoder.reset(state, finished)     # finished (8,) bool: those slots start afresh

    Args:
        model, variables: an ``RNNT`` and its variables.
        search: a ``GreedySearch``, ``BeamSearch`` or ``ModifiedBeamSearch`` (chosen once; default
            BeamSearch(beam_width)).
        blank: the blank token id (negative counts from the end).
        max_tokens: token slots per hypothesis (grown automatically when exceeded in beam search; greedy
            search stops recording past it and ``result`` raises).
        beam_width, greedy, temperature, step_max_tokens, max_symbols_per_step, expansion_capacity: the first
            version's way to choose the search, still accepted when ``search`` is not given.
    """

    def __init__(
        self,
        model: RNNT,
        variables,
        *,
        search: GreedySearch | BeamSearch | ModifiedBeamSearch | None = None,
        blank: int = -1,
        max_tokens: int = 1024,
        beam_width: int = 4,
        greedy: bool = False,
        temperature: float = 1.0,
        step_max_tokens: int = 100,
        max_symbols_per_step: int = 10,
        expansion_capacity: int = 8,
    ) -> None:
        if search is None:
            search = (
                GreedySearch(max_symbols_per_step)
                if greedy
                else BeamSearch(
                    _common.check_beam_width(model, beam_width),
                    _common.check_temperature(temperature),
                    step_max_tokens,
                    expansion_capacity,
                )
            )
        if not isinstance(search, (GreedySearch, BeamSearch, ModifiedBeamSearch)):
            raise TypeError(
                f"search: expected a GreedySearch, BeamSearch or ModifiedBeamSearch, got {type(search).__name__}"
            )
        if isinstance(search, (BeamSearch, ModifiedBeamSearch)):
            _common.check_beam_width(model, search.beam_width)
        _checks.positive_int("max_tokens", max_tokens)
        self.model, self.variables, self.search = model, variables, search
        self.blank = _common.check_blank(model, blank)
        self.max_tokens = max_tokens
        self._init = jax.jit(self._init_impl, static_argnums=(1, 2))
        self._step = jax.jit(self._step_impl)

    def _init_impl(self, variables, batch_size: int, max_tokens: int) -> StreamingDecoderState:
        search = self.search.init(self.model, variables, batch_size, blank=self.blank, max_tokens=max_tokens)
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
        return self._init(self.variables, batch_size, self.max_tokens)

    def reset(
        self, state: StreamingDecoderState, mask: jax.Array, *, reset_transcriber: bool = True
    ) -> StreamingDecoderState:
        """``state`` with the streams where ``mask`` (B,) is True started afresh (new utterances); with
        ``reset_transcriber=False`` only their search state (an endpoint inside a continuing stream)."""
        B = state.transcriber.batch_size
        mask = jnp.asarray(mask)
        _checks.array_shape("mask", mask, (B,), "(B,) one flag per stream")
        # Only the contents start afresh; the running state's room (token slots, expansion capacity) stays.
        fresh = self._init(self.variables, B, state.search.tokens.shape[-1])
        search = fresh.search
        if isinstance(search, BeamState):
            search = search.replace(expansion_capacity=state.search.expansion_capacity)
        fresh = fresh.replace(search=search)
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
        # A beam search that overflowed its room reruns the step with more (unless it had overflowed before).
        while self.search.needs_more_room(new.search) and not bool(
            np.any(np.asarray(getattr(state.search, "overflow", False)))
        ):
            state = state.replace(search=self.search.grown(state.search, new.search))
            new = self._step(self.variables, state, features, lengths)
        return new

    def result(self, state: StreamingDecoderState) -> list:
        """Each stream's result so far: token id lists (greedy) or lists of ``Hypothesis``, best first."""
        return self.search.result(state.search)
