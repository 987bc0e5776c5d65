"""torchaudio's feature extractors as objects, the cutting of a stream into chunks, statistics of audio files.

:class:`FeatureExtractor` and :class:`StreamingFeatureExtractor` are the EMFORMER_RNNT_BASE_LIBRISPEECH
bundle's ``get_feature_extractor()`` and ``get_streaming_feature_extractor()`` over
:func:`~streamformer.features.mel.extract_features`; :func:`chunk_waveform` cuts a stream as torchaudio's
streaming demo does; :func:`global_stats_of_files` computes the pipeline's normalization statistics from
audio files. Shape letters: B batch, N samples, C chunks, S segment frames, R right-context frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from .mel import (
    RIGHT_CONTEXT_LENGTH,
    RIGHT_PADDING,
    SEGMENT_LENGTH,
    MelConfig,
    extract_features,
    frame_lengths,
    log_mel_spectrogram,
)
from .stats import GlobalStats, compute_global_stats

Array = jax.Array


class FeatureExtractor:
    """torchaudio's ``EMFORMER_RNNT_BASE_LIBRISPEECH.get_feature_extractor()``: full-utterance features.

    ``FeatureExtractor(stats)(waveform, lengths)`` == ``extract_features(waveform, stats, lengths,
    right_padding=self.right_padding)``; see :func:`extract_features` for shapes.
    """

    def __init__(
        self,
        global_stats: GlobalStats | str | os.PathLike,
        right_padding: int = RIGHT_PADDING,
        config: MelConfig = MelConfig(),
    ):
        if not isinstance(global_stats, GlobalStats):
            global_stats = GlobalStats.load(global_stats)
        self.global_stats = global_stats
        self.right_padding = right_padding
        self.config = config

    def __call__(
        self, waveform: Array, lengths: Array | None = None, *, sample_rate: int | None = None
    ) -> tuple[Array, Array]:
        return extract_features(
            waveform,
            self.global_stats,
            lengths,
            right_padding=self.right_padding,
            config=self.config,
            sample_rate=sample_rate,
        )


class StreamingFeatureExtractor(FeatureExtractor):
    """torchaudio's ``get_streaming_feature_extractor()``: features of one chunk, no right padding.

    As in torchaudio's streaming demo, a stream is cut into chunks of (segment_length + right_context_length)
    * hop_length samples every segment_length * hop_length samples, the last one zero-padded; each chunk is
    featurized on its own (its own reflect padding at both ends). :meth:`chunk` does that cutting.
    """

    def __init__(self, global_stats: GlobalStats | str | os.PathLike, config: MelConfig = MelConfig()):
        super().__init__(global_stats, right_padding=0, config=config)

    def chunk(
        self,
        waveform: Array,
        segment_length: int = SEGMENT_LENGTH,
        right_context_length: int = RIGHT_CONTEXT_LENGTH,
    ) -> Array:
        return chunk_waveform(waveform, segment_length, right_context_length, config=self.config)


def chunk_waveform(
    waveform: Array,
    segment_length: int = SEGMENT_LENGTH,
    right_context_length: int = RIGHT_CONTEXT_LENGTH,
    *,
    config: MelConfig = MelConfig(),
) -> Array:
    """Cuts a stream as torchaudio's streaming demo does.

    ``for i in range(0, N, S * hop): chunk = pad(w[i : i + (S + R) * hop])`` with zeros on the right.

    Args:
        waveform: (N,) float samples.
        segment_length: S, frames per segment.
        right_context_length: R, right-context frames.

    Returns:
        (C, (S + R) * hop_length) chunks, C = ceil(N / (S * hop_length)); feed them to a
        StreamingFeatureExtractor as a batch, each giving (S + R) + 1 frames.
    """
    waveform = jnp.asarray(waveform)
    if waveform.ndim != 1 or waveform.shape[0] == 0:
        raise ValueError(f"waveform: expected a non-empty (N,) waveform, got shape {tuple(waveform.shape)}")
    for name, value in (("segment_length", segment_length), ("right_context_length", right_context_length)):
        if not isinstance(value, int | np.integer) or value < 0 or (name == "segment_length" and value == 0):
            raise ValueError(
                f"{name}: expected a {'positive' if name == 'segment_length' else 'non-negative'} "
                f"int, got {value!r}"
            )
    step = segment_length * config.hop_length
    width = (segment_length + right_context_length) * config.hop_length
    num_chunks = -(-waveform.shape[0] // step)
    padded = jnp.pad(waveform, (0, (num_chunks - 1) * step + width - waveform.shape[0]))
    index = jnp.arange(num_chunks)[:, None] * step + jnp.arange(width)[None, :]
    return padded[index]


def _read_audio(path: str, config: MelConfig) -> np.ndarray:
    try:
        import soundfile
    except ImportError as error:  # optional dependency
        raise ImportError(
            "reading audio files needs soundfile: pip install 'streamformer[train]' (or soundfile)"
        ) from error
    samples, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != config.sample_rate:
        raise ValueError(f"{path}: expected sample rate {config.sample_rate}, got {rate}; resample it first")
    if samples.shape[1] != 1:
        raise ValueError(f"{path}: expected mono audio, got {samples.shape[1]} channels")
    return samples[:, 0]


def global_stats_of_files(paths: Iterable[str], config: MelConfig = MelConfig()) -> GlobalStats:
    """compute_global_stats over audio files (wav, flac, ... read with soundfile), one utterance each.

    Each file is zero-padded to a whole number of seconds and featurized with its true length, so one
    compilation serves every file of the same rounded duration instead of one per distinct length.
    """

    def features():
        for path in paths:
            samples = _read_audio(path, config)
            width = max(-(-samples.shape[0] // config.sample_rate), 1) * config.sample_rate
            padded = np.zeros((1, width), np.float32)
            padded[0, : samples.shape[0]] = samples
            lengths = np.array([samples.shape[0]], np.int32)
            yield log_mel_spectrogram(padded, lengths, config=config), frame_lengths(lengths, config)

    return compute_global_stats(features())
