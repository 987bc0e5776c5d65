"""The segment layout: how whole utterances map onto segments, right-context blocks and streaming chunks.

One object, ``SegmentLayout(segment_length, right_context_length)``, computes it for the forward pass, the
streaming step, the whole-utterance scan, the transducer's chunks and the chunk feeder of a live stream, so
these never disagree.

Letters: B batch, T utterance frames, S segment_length, R right_context_length, N = ceil(T / S) segments,
D features.

Padding rule: every sequence behaves as if it were alone. Sequence b has ``lengths[b]`` valid frames followed
directly by its R right-context frames; segment n covers frames [n S, min(n S + S, lengths[b])) and its
right-context block is the R frames right after them (the next segment's start, or the sequence's own right
context after its last frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = ["ChunkFeeder", "SegmentLayout"]


@dataclasses.dataclass(frozen=True)
class SegmentLayout:
    """Segments of ``segment_length`` (S) frames, each followed by ``right_context_length`` (R) look-ahead
    frames."""

    segment_length: int
    right_context_length: int

    def __post_init__(self):
        _checks.positive_int("segment_length", self.segment_length)
        _checks.positive_int("right_context_length", self.right_context_length, minimum=0)

    @property
    def chunk_length(self) -> int:
        """S + R, the frames of one streaming step."""
        return self.segment_length + self.right_context_length

    def num_segments(self, frames: int) -> int:
        """N = ceil(T / S)."""
        return -(-frames // self.segment_length)

    def padded_frames(self, frames: int) -> int:
        """N S: ``frames`` rounded up to whole segments."""
        return self.num_segments(frames) * self.segment_length

    def segment_starts(self, num_segments: int) -> jax.Array:
        """(N,) the first frame of each segment."""
        return jnp.arange(num_segments) * self.segment_length

    def valid_frames(self, lengths: jax.Array, num_segments: int) -> jax.Array:
        """(B, N) int32 valid frames of each segment (0 .. S)."""
        starts = self.segment_starts(num_segments)
        return jnp.clip(lengths[:, None] - starts[None, :], 0, self.segment_length).astype(jnp.int32)

    def right_context_starts(self, valid_frames: jax.Array) -> jax.Array:
        """(B, N) where each segment's right-context block starts: right after its valid frames."""
        return self.segment_starts(valid_frames.shape[1])[None, :] + valid_frames

    def right_context_index(self, valid_frames: jax.Array) -> jax.Array:
        """(B, N, R) the input frames of each segment's right-context block."""
        return self.right_context_starts(valid_frames)[..., None] + jnp.arange(self.right_context_length)

    def split(self, input: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """The forward pass's view of whole utterances.

        Args:
            input: (B, T + R, D) each sequence's R right-context frames right after its valid frames.
            lengths: (B,) valid frames per sequence (<= T).

        Returns:
            segments (B, N, S, D) (the last one zero-padded), right_context (B, N, R, D), valid_frames (B, N).
        """
        S, R = self.segment_length, self.right_context_length
        B, T, D = input.shape[0], input.shape[1] - R, input.shape[2]
        N = self.num_segments(T)
        segments = jnp.pad(input[:, :T], ((0, 0), (0, N * S - T), (0, 0))).reshape(B, N, S, D)
        valid = self.valid_frames(lengths, N)
        index = self.right_context_index(valid).reshape(B, N * R)
        right_context = jnp.take_along_axis(input, index[..., None], axis=1).reshape(B, N, R, D)
        return segments, right_context, valid

    def chunks(self, input: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Whole utterances cut into the chunks a stream delivers to a streaming step, one per segment.

        Args:
            input: (B, T + R, D) as for ``split``.
            lengths: (B,) valid frames per sequence (<= T).

        Returns:
            chunks (B, N, S + R, D): chunk n holds frames [n S, n S + S) and then its right-context block;
            chunk_lengths (B, N): valid frames + R (torchaudio's convention), or 0 once the sequence has ended.
        """
        segments, right_context, valid = self.split(input, lengths)
        chunks = jnp.concatenate([segments, right_context], axis=2)
        return chunks, jnp.where(valid > 0, valid + self.right_context_length, 0).astype(jnp.int32)

    def chunk_valid_frames(self, chunk_lengths: jax.Array) -> jax.Array:
        """(B,) valid segment frames of a chunk from its length (right context included): clip(n - R, 0, S)."""
        return jnp.clip(chunk_lengths - self.right_context_length, 0, self.segment_length)

    def regroup_chunk(self, chunk: jax.Array, chunk_lengths: jax.Array, stride: int) -> jax.Array:
        """A chunk (B, S + R, D) whose right context starts after the last whole group of ``stride`` valid
        frames: the v % stride frames that fill no reduced frame leave the segment and open its right context,
        as time reduction does in the forward pass (the identity for a full segment)."""
        S, R = self.segment_length, self.right_context_length
        valid = self.chunk_valid_frames(chunk_lengths)[:, None]
        position = valid // stride * stride + jnp.arange(R)[None, :]
        index = jnp.where(position < valid, position, S + position - valid)
        right_context = jnp.take_along_axis(chunk, index[..., None], axis=1)
        return jnp.concatenate([chunk[:, :S], right_context], axis=1)

    def iter_chunks(
        self, features: np.ndarray, lengths: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (chunk (B, S + R, F), chunk_lengths (B,)) as live streams deliver them, from host arrays
        (features (B, T', F) with each stream's look-ahead frames after its valid ones; frames past the
        array's end count as zeros). A stream that has ended gets length 0 (nothing new)."""
        S, R = self.segment_length, self.right_context_length
        B, _, F = features.shape
        N = self.num_segments(int(np.max(lengths))) if len(lengths) else 0
        padded = np.zeros((B, max(N * S + R, features.shape[1]), F), features.dtype)
        padded[:, : features.shape[1]] = features
        chunks, chunk_lengths = self.chunks(jnp.asarray(padded), jnp.asarray(lengths, jnp.int32))
        chunks, chunk_lengths = np.asarray(chunks), np.asarray(chunk_lengths, np.int32)
        for n in range(N):
            yield chunks[:, n], chunk_lengths[:, n]

    def feeder(self, batch_size: int, num_features: int, dtype=np.float32) -> ChunkFeeder:
        """A ``ChunkFeeder`` of this layout: frames of live streams in, streaming-step chunks out."""
        return ChunkFeeder(self, batch_size, num_features, dtype)


class ChunkFeeder:
    """Cuts live streams into the chunks of streaming steps as their frames arrive (numpy, on the host).

    ``feed(frames)`` takes the streams' next frames (B, n, F), any n, and returns the chunks that became
    complete: a segment goes once its R look-ahead frames exist. ``finish()`` returns the rest when the streams
    end: the last (partial) segments, with the look-ahead that exists and zeros after it. Chunks are
    ``(chunk (B, S + R, F), chunk_lengths (B,))`` as a streaming step takes them (lengths: valid frames + R);
    all B streams advance together. Together they are exactly ``layout.iter_chunks`` of the whole utterances.

    Example:
        >>> feeder = model.layout.feeder(1, 80)
        >>> for frames in audio_frames():                      # (1, n, 80) as they come
        ...     for chunk, lengths in feeder.feed(frames):
        ...         state = decoder.step(state, chunk, lengths)
        >>> for chunk, lengths in feeder.finish(): ...
    """

    def __init__(self, layout: SegmentLayout, batch_size: int, num_features: int, dtype=np.float32):
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("num_features", num_features)
        self.layout = layout
        self._pending = np.zeros((batch_size, 0, num_features), dtype)  # frames not yet in a sent segment

    def feed(self, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """frames (B, n, F), n >= 0: the streams' next frames. Returns the chunks now complete, in order."""
        B, _, F = self._pending.shape
        _checks.array_shape("frames", frames, (B, None, F), "(B, n, F) matching the feeder")
        self._pending = np.concatenate([self._pending, np.asarray(frames, self._pending.dtype)], axis=1)
        S, chunk_length = self.layout.segment_length, self.layout.chunk_length
        ready = []
        while self._pending.shape[1] >= chunk_length:
            ready.append((self._pending[:, :chunk_length].copy(), np.full(B, chunk_length, np.int32)))
            self._pending = self._pending[:, S:]
        return ready

    @property
    def frames_to_next_chunk(self) -> int:
        """Frames still to feed before ``feed`` returns the next chunk (a live server waits for them)."""
        return self.layout.chunk_length - self._pending.shape[1]

    def finish(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The chunks left when the streams end (none once called); past the last frame, look-ahead frames
        are zeros, as ``iter_chunks`` counts frames past the array's end."""
        S, R = self.layout.segment_length, self.layout.right_context_length
        B, _, F = self._pending.shape
        ready = []
        while self._pending.shape[1] > 0:
            valid = min(S, self._pending.shape[1])
            look_ahead = self._pending[:, valid : valid + R]
            chunk = np.zeros((B, S + R, F), self._pending.dtype)
            chunk[:, :valid] = self._pending[:, :valid]
            chunk[:, S : S + look_ahead.shape[1]] = look_ahead
            ready.append((chunk, np.full(B, valid + R, np.int32)))
            self._pending = self._pending[:, valid:]
        return ready
