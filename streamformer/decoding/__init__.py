"""RNN-T decoding: greedy and beam search, offline and streaming, batched and jit-compiled.

torchaudio's ``RNNTBeamSearch`` decodes one utterance at a time in a Python loop over lists of hypotheses.
Here the same searches run on fixed-shape arrays inside compiled programs, for a batch of utterances at once.

- ``search``: the contract every search meets (``Search``: ``init``, ``frames``, ``result``, and room to
  grow), its result ``Hypothesis`` (tokens, score, timestamps), ``FrameSearch`` (a search written one frame
  at a time) and ``decode`` (offline decoding with any search).
- ``greedy``: ``GreedySearch`` and ``greedy_search`` (offline).
- ``beam``: torchaudio's beam search: ``BeamSearch`` and ``beam_search`` (offline).
- ``modified_beam``: icefall's modified beam search (at most one token per frame, all hypotheses of all
  utterances in one joiner call): ``ModifiedBeamSearch`` and ``modified_beam_search`` (offline).
- ``streaming``: ``StreamingDecoder`` (one compiled step per segment for a batch of independent streams, with
  any search chosen once). ``model.layout.iter_chunks`` cuts whole utterances into the chunks it takes.
- ``timestamps``: ``frame_period`` and ``word_times`` (word start and end times in seconds from the
  searches' per-token frames).
- ``endpoint``: endpoint rules for live streams (``EndpointConfig``, ``EndpointRule``,
  ``detect_endpoints``, ``endpoint_step``).
- ``export``: ``export_transducer`` (``jax.export`` of the streaming step and the offline transcription into
  an artifact directory) and ``load_exported`` (runs it with jax and numpy only; import it from
  ``streamformer.decoding.export``, or load the artifact's runtime.py by path without streamformer).

Every search returns, per utterance or stream, a list of ``Hypothesis`` best first (greedy search: one).
``greedy_search(...)`` is ``decode(..., GreedySearch(...))``, and so on for the others.

The predictor is primed with the blank token; returned tokens exclude that initial blank. Token ids are
returned raw: ``streamformer.text.TokenProcessor`` (torchaudio's ``_SentencePieceTokenProcessor``) turns them
into text; it drops the first token as torchaudio's does, so give it ``[blank, *hypothesis.tokens]``.

Where we differ from torchaudio on purpose: frames past an utterance's valid length (padding, or the part of
a last partial segment with no frames) are not decoded. torchaudio decodes every frame of the encoder output
it is given, valid or not.
"""

from .beam import BeamSearch, BeamState, beam_search
from .endpoint import EndpointConfig, EndpointRule, detect_endpoints, endpoint_step
from .greedy import GreedySearch, GreedyState, greedy_search
from .modified_beam import ModifiedBeamSearch, ModifiedBeamState, modified_beam_search
from .search import FrameSearch, Hypothesis, Search, check_search, decode
from .streaming import StreamingDecoder, StreamingDecoderState
from .timestamps import Word, frame_period, word_times

__all__ = [
    "BeamSearch",
    "BeamState",
    "EndpointConfig",
    "EndpointRule",
    "FrameSearch",
    "GreedySearch",
    "GreedyState",
    "Hypothesis",
    "ModifiedBeamSearch",
    "ModifiedBeamState",
    "Search",
    "StreamingDecoder",
    "StreamingDecoderState",
    "Word",
    "beam_search",
    "check_search",
    "decode",
    "detect_endpoints",
    "endpoint_step",
    "frame_period",
    "greedy_search",
    "modified_beam_search",
    "word_times",
]
