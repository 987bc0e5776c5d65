"""What the server steps: a checkpoint's ``StreamingDecoder`` or an exported artifact (run without the model
code), behind one small interface, so that the batcher is written once.

A backend holds no stream state itself: ``init`` returns the state of ``batch_size`` streams and every other
method takes and returns it. Shapes: B streams, S + R chunk frames, F features.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np

__all__ = ["Backend", "CheckpointBackend", "ExportedBackend", "SEARCHES"]

SEARCHES = ("greedy", "modified_beam")


class Backend(Protocol):
    """The decoding a server batches (one compiled step for all its streams)."""

    batch_size: int  # B streams
    segment_length: int  # S frames per step
    right_context_length: int  # R look-ahead frames
    num_features: int  # F
    frame_period: float  # seconds per encoder frame (word times, endpoint rules)
    max_tokens: int  # token slots of a hypothesis
    description: str  # one line for the log

    def init(self) -> Any:
        """The state of B fresh streams."""

    def step(self, state: Any, chunks: np.ndarray, lengths: np.ndarray) -> Any:
        """One segment of every stream: chunks (B, S + R, F) normalized features, lengths (B,) valid frames with
        the right context (0: the stream has nothing this step and is left as it was)."""

    def best(self, state: Any) -> list[tuple[list[int], list[int]]]:
        """Each stream's best hypothesis so far: (token ids, the encoder frame of each)."""

    def decoded_frames(self, state: Any) -> np.ndarray:
        """(B,) encoder frames decoded since each stream's start or its search's last reset."""

    def overflowed(self, state: Any) -> np.ndarray:
        """(B,) bool: streams that emitted more tokens than their hypothesis can hold."""

    def reset(self, state: Any, mask: np.ndarray, *, search_only: bool) -> Any:
        """The streams where mask (B,) is True started afresh (``search_only``: only their search, as at an
        endpoint; the transcriber keeps its context)."""

    def normalize(self, frames: np.ndarray) -> np.ndarray:
        """Log-mel frames (n, F) normalized with the model's feature statistics."""

    def text(self, tokens: list[int]) -> str: ...

    def pieces(self, tokens: list[int]) -> list[str]: ...


class CheckpointBackend:
    """A checkpoint's model and variables through ``StreamingDecoder`` (greedy or modified beam search)."""

    def __init__(
        self, model, variables, tokenizer, stats, *, batch_size: int, search: str = "greedy", beam: int = 4
    ):
        from streamformer.decoding import GreedySearch, ModifiedBeamSearch, StreamingDecoder, frame_period

        if search not in SEARCHES:
            raise ValueError(f"search: expected one of {', '.join(SEARCHES)}, got {search!r}")
        if search == "modified_beam" and (isinstance(beam, bool) or not isinstance(beam, int) or beam < 1):
            raise ValueError(f"beam: expected a beam width >= 1 for modified_beam search, got {beam!r}")
        chosen = GreedySearch(return_timestamps=True) if search == "greedy" else ModifiedBeamSearch(beam)
        self.decoder = StreamingDecoder(model, variables, search=chosen, blank=tokenizer.blank_id)
        self.tokenizer, self.stats = tokenizer, stats
        self.batch_size = batch_size
        self.segment_length, self.right_context_length = model.segment_length, model.right_context_length
        self.num_features = model.config.input_dim
        self.frame_period = frame_period(model.config)
        self.max_tokens = self.decoder.max_tokens
        self.description = f"checkpoint, {search}" + (f" (beam {beam})" if search != "greedy" else "")

    def init(self):
        return self.decoder.init(self.batch_size)

    def step(self, state, chunks, lengths):
        return self.decoder.step(state, chunks, lengths)

    def best(self, state):
        return [(h[0].tokens, h[0].timestamps) if h else ([], []) for h in self.decoder.result(state)]

    def decoded_frames(self, state):
        return np.asarray(state.search.frames)

    def overflowed(self, state):
        lengths = np.asarray(state.search.lengths)
        lengths = lengths[:, 0] if lengths.ndim == 2 else lengths
        return lengths > np.asarray(state.search.tokens).shape[-1]

    def reset(self, state, mask, *, search_only):
        return self.decoder.reset(state, np.asarray(mask), reset_transcriber=not search_only)

    def normalize(self, frames):
        from ..corpora.prepare import normalize

        return normalize(frames, self.stats)

    def text(self, tokens):
        return self.tokenizer.decode(tokens)

    def pieces(self, tokens):
        return [self.tokenizer.sp_model.id_to_piece(int(t)) for t in tokens]


class ExportedBackend:
    """An exported artifact (``python -m train export``): its streaming step, tokenizer and statistics, run
    with jax and numpy only. Its batch size and search were fixed at export."""

    def __init__(self, directory: str | os.PathLike):
        from streamformer.decoding.exported_runtime import load_exported

        self.artifact = load_exported(directory)
        m = self.artifact.manifest
        if not m.get("tokenizer") or not m.get("global_stats"):
            raise ValueError(
                f"exported: the artifact in {os.fspath(directory)!r} has no tokenizer or feature statistics; "
                f"export it with `python -m train export`, which adds both"
            )
        self.batch_size = self.artifact.batch_size
        self.segment_length, self.right_context_length = m["segment_length"], m["right_context_length"]
        self.num_features = m["input_dim"]
        self.frame_period = 0.01 * m["time_reduction_stride"]
        self.max_tokens = m["max_tokens"]
        self.description = f"exported artifact {os.fspath(directory)}, {m['search']['kind']}"

    def init(self):
        B = self.batch_size
        empty = np.zeros((B, self.artifact.manifest["max_tokens"]), np.int32)
        return self.artifact.init_state(), empty, empty, np.zeros(B, np.int32)

    def step(self, state, chunks, lengths):
        return self.artifact.step(state[0], chunks, np.asarray(lengths, np.int32))

    def best(self, state):
        _, tokens, frames, counts = state
        counts = np.minimum(counts, tokens.shape[1])
        return [
            (tokens[b, : counts[b]].tolist(), frames[b, : counts[b]].tolist()) for b in range(len(counts))
        ]

    def decoded_frames(self, state):
        return self.artifact.decoded_frames(state[0])

    def overflowed(self, state):
        return state[3] > state[1].shape[1]

    def reset(self, state, mask, *, search_only):
        mask = np.asarray(mask, bool)
        counts = np.where(mask, 0, state[3])  # the best hypothesis of a reset stream is empty
        return self.artifact.reset(state[0], mask, search_only=search_only), state[1], state[2], counts

    def normalize(self, frames):
        return self.artifact.normalize(frames)

    def text(self, tokens):
        return self.artifact.decode(tokens)

    def pieces(self, tokens):
        return [self.artifact.piece(t) for t in tokens]
