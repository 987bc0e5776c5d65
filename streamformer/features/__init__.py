"""The front end of torchaudio's Emformer RNN-T pipeline (EMFORMER_RNNT_BASE_LIBRISPEECH), in JAX.

- :mod:`~streamformer.features.mel`: the bundle's settings, :class:`MelConfig`, the mel filterbank, (log-)mel
  spectrograms and :func:`extract_features` (log mel, normalization, right padding).
- :mod:`~streamformer.features.stats`: :class:`GlobalStats` (torchaudio's ``global_stats.json``) and
  :func:`compute_global_stats`.
- :mod:`~streamformer.features.pipeline`: :class:`FeatureExtractor`, :class:`StreamingFeatureExtractor`,
  :func:`chunk_waveform` and :func:`global_stats_of_files`.
- :mod:`~streamformer.features.live`: :class:`LiveLogMel`, the frames of live streams as their samples arrive.

Everything is importable from here (``from streamformer.features import log_mel_spectrogram``).
"""

from .live import LiveLogMel
from .mel import (
    GAIN,
    HOP_LENGTH,
    N_FFT,
    N_MELS,
    RIGHT_CONTEXT_LENGTH,
    RIGHT_PADDING,
    SAMPLE_RATE,
    SEGMENT_LENGTH,
    MelConfig,
    extract_features,
    frame_lengths,
    log_mel_spectrogram,
    mel_filterbank,
    mel_spectrogram,
    piecewise_linear_log,
)
from .pipeline import FeatureExtractor, StreamingFeatureExtractor, chunk_waveform, global_stats_of_files
from .stats import GlobalStats, compute_global_stats, global_stats_from_sums

__all__ = [
    "GAIN",
    "HOP_LENGTH",
    "N_FFT",
    "N_MELS",
    "RIGHT_CONTEXT_LENGTH",
    "RIGHT_PADDING",
    "SAMPLE_RATE",
    "SEGMENT_LENGTH",
    "FeatureExtractor",
    "GlobalStats",
    "LiveLogMel",
    "MelConfig",
    "StreamingFeatureExtractor",
    "chunk_waveform",
    "compute_global_stats",
    "global_stats_from_sums",
    "extract_features",
    "frame_lengths",
    "global_stats_of_files",
    "log_mel_spectrogram",
    "mel_filterbank",
    "mel_spectrogram",
    "piecewise_linear_log",
]
