"""The front end's per-feature normalization statistics: torchaudio's ``global_stats.json``, and computing it.

:class:`GlobalStats` holds the (D,) mean and inverse standard deviation the pipeline normalizes with
(:func:`streamformer.features.extract_features`); :func:`compute_global_stats` computes them from log-mel features
before normalization, as torchaudio's ``global_stats.py`` does. Shape letters: B batch, T frames, D features.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import flax.struct
import jax
import numpy as np

from ..io import atomic_write_text

Array = jax.Array


@flax.struct.dataclass
class GlobalStats:
    """Per-feature normalization statistics; JSON as torchaudio: ``{"mean": [...], "invstddev": [...]}``.

    A pytree, so it can be passed into jitted functions as an argument (no recompilation per statistics).

    Attributes:
        mean: (D,) float32, mean of each feature before normalization.
        invstddev: (D,) float32, 1 / standard deviation of each feature before normalization.
    """

    mean: Array
    invstddev: Array

    @classmethod
    def load(cls, path: str | os.PathLike) -> GlobalStats:
        """Reads a JSON file of torchaudio's format (e.g. global_stats_rnnt_librispeech.json)."""
        with open(path) as f:
            blob = json.load(f)
        if not isinstance(blob, dict) or "mean" not in blob or "invstddev" not in blob:
            raise ValueError(f"{os.fspath(path)}: expected a JSON object with 'mean' and 'invstddev' lists")
        return cls.from_lists(blob["mean"], blob["invstddev"])

    @classmethod
    def from_lists(cls, mean: Sequence[float], invstddev: Sequence[float]) -> GlobalStats:
        mean = np.asarray(mean, dtype=np.float32)
        invstddev = np.asarray(invstddev, dtype=np.float32)
        if mean.ndim != 1 or mean.shape != invstddev.shape or mean.size == 0:
            raise ValueError(
                f"global stats: expected 'mean' and 'invstddev' of one equal length D, got shapes "
                f"{mean.shape} and {invstddev.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(invstddev).all()):
            raise ValueError("global stats: expected finite 'mean' and 'invstddev', got NaN or Inf")
        return cls(mean=mean, invstddev=invstddev)

    @property
    def num_features(self) -> int:
        return int(np.shape(self.mean)[0])

    def to_json(self) -> str:
        mean = np.asarray(self.mean, dtype=np.float32)
        invstddev = np.asarray(self.invstddev, dtype=np.float32)
        return json.dumps({"mean": mean.tolist(), "invstddev": invstddev.tolist()}, indent=2)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the JSON file atomically (a temporary file in the same folder, then os.replace)."""
        atomic_write_text(path, self.to_json() + "\n")


def compute_global_stats(features: Iterable[Array | tuple[Array, Array]]) -> GlobalStats:
    """Mean and 1 / standard deviation of each feature over all frames, as torchaudio's global_stats.py.

    Feed the pipeline's features BEFORE normalization (:func:`log_mel_spectrogram`). The standard deviation is
    the population one, sqrt(E[x^2] - E[x]^2), as torchaudio's script computes it; sums are accumulated in
    float64 (torchaudio keeps running float32 averages, so figures differ in the last digits).

    Args:
        features: an iterable of either (T, D) arrays (one utterance each) or (features (B, T, D),
            lengths (B,)) pairs, where only the first lengths[b] frames of row b count.

    Returns:
        GlobalStats with (D,) mean and invstddev.
    """
    total = total_sq = None
    count = 0
    for i, item in enumerate(features):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"features[{i}]: expected an array or a (features, lengths) pair")
            batch, lengths = np.asarray(item[0], np.float64), np.asarray(item[1])
            if batch.ndim != 3 or lengths.shape != batch.shape[:1]:
                raise ValueError(
                    f"features[{i}]: expected (B, T, D) features and (B,) lengths, got {batch.shape} and "
                    f"{lengths.shape}"
                )
            mask = np.arange(batch.shape[1])[None, :] < lengths[:, None]
            frames = batch[mask]
        else:
            frames = np.asarray(item, np.float64)
            if frames.ndim != 2:
                raise ValueError(f"features[{i}]: expected (T, D) features, got shape {frames.shape}")
        if total is None:
            total = np.zeros(frames.shape[-1])
            total_sq = np.zeros(frames.shape[-1])
        elif frames.shape[-1] != total.shape[0]:
            raise ValueError(f"features[{i}]: expected D = {total.shape[0]} features, got {frames.shape[-1]}")
        if not np.isfinite(frames).all():
            raise ValueError(f"features[{i}]: expected finite values, got NaN or Inf")
        total += frames.sum(0)
        total_sq += np.square(frames).sum(0)
        count += frames.shape[0]
    return global_stats_from_sums(total, total_sq, count)


def global_stats_from_sums(total: Array, total_sq: Array, count: int) -> GlobalStats:
    """GlobalStats from per-feature sums of the frames, of their squares, and the frame count (what
    :func:`compute_global_stats` accumulates; sums of parts, e.g. of shards prepared apart, add up)."""
    if count == 0:
        raise ValueError("features: expected at least one frame, got none")
    total, total_sq = np.asarray(total, np.float64), np.asarray(total_sq, np.float64)
    mean = total / count
    variance = np.maximum(total_sq / count - np.square(mean), 0.0)
    stddev = np.sqrt(variance)
    if (stddev == 0).any():
        raise ValueError(
            f"features: expected every feature to vary, got zero variance in feature(s) "
            f"{np.flatnonzero(stddev == 0).tolist()} over {count} frames"
        )
    return GlobalStats.from_lists(mean.astype(np.float32), (1.0 / stddev).astype(np.float32))
