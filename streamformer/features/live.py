"""Log-mel frames of live streams, computed as their samples arrive.

``LiveLogMel(B)`` keeps B independent streams (a live stream per slot). Samples come in any number at a time
(``push``), the end of a stream is said once (``finish``), and ``frames()`` returns every stream's frames that
became computable, in blocks of ``block_frames`` frames through one compiled shape (B, window samples) for
all streams at once. A stream's frames, put together, are those of :func:`log_mel_spectrogram` on its whole
audio: torchaudio's centred frames, with reflect padding at both ends of the stream. A frame goes out as soon
as the samples under its window exist; the last ones, whose windows reach past the end, go after ``finish``.

Each stream keeps only the tail of its audio that frames still to come read, so memory does not grow with the
stream's length. Letters: B streams, N samples, W window samples, D n_mels.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _checks
from .mel import MelConfig, log_mel_spectrogram

__all__ = ["LiveLogMel"]


class _Stream:
    def __init__(self) -> None:
        self.tail = np.zeros(0, np.float32)  # the samples from tail_start on
        self.tail_start = 0
        self.received = 0  # samples pushed (N)
        self.emitted = 0  # frames returned
        self.finished = False


class LiveLogMel:
    """Unnormalized log-mel frames (n, D) of B live streams, as samples arrive (numpy in, numpy out).

    Example:
        >>> live = LiveLogMel(batch_size=2)
        >>> live.push(0, samples)                # (n,) float32 at config.sample_rate, any n
        >>> frames = live.frames()               # B arrays (n_b, D): the frames computable now
        >>> live.finish(0); last = live.frames()[0]
        >>> live.reset(0)                        # stream 0 starts a new utterance

    Args:
        batch_size: B streams.
        block_frames: frames per stream computed by one call (the compiled shape is
            (B, (block_frames + 2 margin) x hop) samples); more ready frames take more calls.
        config: the mel settings.
    """

    def __init__(self, batch_size: int, block_frames: int = 64, config: MelConfig = MelConfig()):
        _checks.positive_int("batch_size", batch_size)
        _checks.positive_int("block_frames", block_frames)
        self.config, self.block_frames = config, block_frames
        # Frames of context each side of a block: a window reaches n_fft // 2 samples out from its centre.
        self._margin = math.ceil((config.n_fft // 2) / config.hop_length)
        self._streams = [_Stream() for _ in range(batch_size)]

    @property
    def batch_size(self) -> int:
        return len(self._streams)

    def _stream(self, stream: int) -> _Stream:
        if (
            isinstance(stream, bool)
            or not isinstance(stream, int | np.integer)
            or not 0 <= stream < self.batch_size
        ):
            raise ValueError(f"stream: expected an index in [0, {self.batch_size}), got {stream!r}")
        return self._streams[stream]

    def push(self, stream: int, samples: np.ndarray) -> None:
        """Appends ``samples`` (n,) to ``stream``'s audio."""
        s = self._stream(stream)
        if s.finished:
            raise ValueError(f"stream: {stream} was finished; reset it before pushing a new utterance")
        samples = np.asarray(samples, np.float32)
        if samples.ndim != 1:
            raise ValueError(f"samples: expected shape (n,), got {samples.shape}")
        s.tail = np.concatenate([s.tail, samples])
        s.received += samples.size

    def finish(self, stream: int) -> None:
        """Ends ``stream``'s audio: its last frames (reflect padding at the end) come with the next ``frames``.
        Audio shorter than ``config.min_samples`` is zero-padded to it (the front end's minimum)."""
        s = self._stream(stream)
        if not s.finished:
            if s.received < self.config.min_samples:
                self.push(stream, np.zeros(self.config.min_samples - s.received, np.float32))
            s.finished = True

    def reset(self, stream: int) -> None:
        """Forgets ``stream``'s audio: it starts afresh."""
        self._stream(stream)
        self._streams[stream] = _Stream()

    def total_frames(self, num_samples: int) -> int:
        """Frames of a whole stream of ``num_samples`` samples (``log_mel_spectrogram``'s count)."""
        return max(num_samples, self.config.min_samples) // self.config.hop_length + 1

    def frames_before_end(self, num_samples: int) -> int:
        """Frames computable from the first ``num_samples`` samples of a stream that goes on (their windows end
        within the samples; the first needs ``config.min_samples`` for its reflect padding)."""
        right = self.config.n_fft - self.config.n_fft // 2  # samples a window reaches at and after its centre
        if num_samples < self.config.min_samples:
            return 0
        return (num_samples - right) // self.config.hop_length + 1

    def samples_for_frames(self, frames: int) -> int:
        """The fewest samples of a stream that goes on for ``frames_before_end`` to reach ``frames``."""
        if frames <= 0:
            return 0
        right = self.config.n_fft - self.config.n_fft // 2
        return max(self.config.min_samples, (frames - 1) * self.config.hop_length + right)

    def frames_done(self, stream: int) -> int:
        """Frames of ``stream`` returned so far."""
        return self._stream(stream).emitted

    def _ready(self, s: _Stream) -> int:
        target = self.total_frames(s.received) if s.finished else self.frames_before_end(s.received)
        return max(target - s.emitted, 0)

    def _window(self, s: _Stream, width: int) -> np.ndarray:
        hop = self.config.hop_length
        index = (s.emitted - self._margin) * hop + np.arange(width)  # absolute sample positions
        index = np.abs(index)  # reflect at the start (x[-d] = x[d])
        if s.finished:
            index = np.where(index > s.received - 1, 2 * (s.received - 1) - index, index)  # and at the end
        local = index - s.tail_start
        inside = (local >= 0) & (local < s.tail.size)  # positions outside feed only discarded margin frames
        return np.where(inside, s.tail[np.clip(local, 0, max(s.tail.size - 1, 0))] if s.tail.size else 0, 0)

    def frames(self) -> list[np.ndarray]:
        """Every stream's frames that became computable since the last call: B float32 arrays (n_b, D)."""
        hop, block, margin = self.config.hop_length, self.block_frames, self._margin
        width = (block + 2 * margin) * hop
        out: list[list[np.ndarray]] = [[] for _ in self._streams]
        while True:
            counts = [min(self._ready(s), block) for s in self._streams]
            if not any(counts):
                break
            windows = np.zeros((self.batch_size, width), np.float32)
            for b, s in enumerate(self._streams):
                if counts[b]:
                    windows[b] = self._window(s, width)
            lengths = np.full(self.batch_size, width, np.int32)
            features = np.asarray(log_mel_spectrogram(windows, lengths, config=self.config))
            for b, s in enumerate(self._streams):
                if counts[b]:
                    out[b].append(features[b, margin : margin + counts[b]])
                    s.emitted += counts[b]
                    keep_from = max(0, (s.emitted - margin) * hop)  # what the next frames' windows read
                    if keep_from > s.tail_start:
                        s.tail = s.tail[keep_from - s.tail_start :]
                        s.tail_start = keep_from
        empty = np.zeros((0, self.config.n_mels), np.float32)
        return [np.concatenate(parts) if parts else empty for parts in out]
