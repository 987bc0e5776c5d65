"""RNN-T decoding: greedy and beam search, offline and streaming, batched and jit-compiled.

torchaudio's ``RNNTBeamSearch`` decodes one utterance at a time in a Python loop over lists of hypotheses.
Here the same searches run on fixed-shape arrays inside compiled programs, for a batch of utterances at once.

- ``greedy``: ``greedy_search`` (offline), ``GreedySearch`` / ``greedy_frames`` (the search over frames).
- ``beam``: torchaudio's beam search: ``beam_search`` (offline), ``BeamSearch`` / ``beam_frames``.
- ``modified_beam``: icefall's modified beam search (at most one token per frame, all hypotheses of all
  utterances in one joiner call): ``modified_beam_search`` (offline), ``ModifiedBeamSearch`` /
  ``modified_beam_frames``.
- ``timestamps``: ``frame_period`` and ``word_times`` (word start and end times in seconds from the
  searches' per-token frames).
- ``endpoint``: endpoint rules for live streams (``EndpointConfig``, ``EndpointRule``,
  ``detect_endpoints``, ``endpoint_step``).
- ``export``: ``export_transducer`` (``jax.export`` of the streaming step and the offline transcription into
  an artifact directory) and ``load_exported`` (runs it with jax and numpy only; import it from
  ``streamformer.decoding.export``, or load the artifact's runtime.py by path without streamformer).
- ``streaming``: ``StreamingDecoder`` (one compiled step per segment for a batch of independent streams, with
  a search object chosen once) and ``stream_segments`` (the chunk feeder).

The predictor is primed with the blank token; returned tokens exclude that initial blank. Token ids are
returned raw: ``streamformer.text.TokenProcessor`` (torchaudio's ``_SentencePieceTokenProcessor``) turns them
into text; it drops the first token as torchaudio's does, so give it ``[blank, *hypothesis.tokens]``.

Where we differ from torchaudio on purpose: frames past an utterance's valid length (padding, or the part of
a last partial segment with no frames) are not decoded. torchaudio decodes every frame of the encoder output
it is given, valid or not.
"""

from .beam import BeamSearch, BeamState, Hypothesis, beam_frames, beam_search, init_beam_state
from .endpoint import EndpointConfig, EndpointRule, detect_endpoints, endpoint_step
from .greedy import GreedySearch, GreedyState, greedy_frames, greedy_search, init_greedy_state
from .modified_beam import (
    ModifiedBeamSearch,
    ModifiedBeamState,
    init_modified_beam_state,
    modified_beam_frames,
    modified_beam_search,
)
from .streaming import StreamingDecoder, StreamingDecoderState, stream_segments
from .timestamps import Word, frame_period, word_times

__all__ = [
    "BeamSearch",
    "BeamState",
    "EndpointConfig",
    "EndpointRule",
    "GreedySearch",
    "GreedyState",
    "Hypothesis",
    "ModifiedBeamSearch",
    "ModifiedBeamState",
    "StreamingDecoder",
    "StreamingDecoderState",
    "Word",
    "beam_frames",
    "beam_search",
    "detect_endpoints",
    "endpoint_step",
    "frame_period",
    "greedy_frames",
    "greedy_search",
    "init_beam_state",
    "init_greedy_state",
    "init_modified_beam_state",
    "modified_beam_frames",
    "modified_beam_search",
    "stream_segments",
    "word_times",
]
