"""The log-mel front end of torchaudio's Emformer RNN-T pipeline (EMFORMER_RNNT_BASE_LIBRISPEECH), in JAX.

The pipeline, per utterance, as torchaudio 2.8 builds it in ``pipelines/rnnt_pipeline.py``:

1. ``MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=80, hop_length=160)``: periodic Hann window of n_fft
   samples, ``center=True`` (reflect padding of n_fft // 2 samples on both sides, so an utterance of N samples
   gives N // hop_length + 1 frames), power 2, HTK mel scale without norm, f_min 0, f_max sample_rate / 2.
2. Transpose to (T, n_mels), multiply by ``GAIN`` (32767 ** 2), then ``piecewise_linear_log``.
3. Global normalization ``(x - mean) * invstddev`` with per-feature statistics read from a JSON file
   ``{"mean": [...], "invstddev": [...]}``.
4. Full-utterance extractor only: ``right_padding`` (4) frames of zeros appended after normalization, which
   stand in for the model's right context; the returned length counts them.

Everything here is jit-able and runs on device. Batched input (B, N) with per-utterance ``lengths`` gives each
utterance the features torchaudio gives it alone (its own reflect padding at its own end); frames past an
utterance's length are zeros. Computation is float32 whatever the input float dtype (bfloat16 included).

Value checks (lengths in range, no NaN or Inf) run only on concrete arrays, never on jax Tracers.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from .stats import GlobalStats

Array = jax.Array


# The EMFORMER_RNNT_BASE_LIBRISPEECH bundle's settings.
SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
RIGHT_PADDING = 4
SEGMENT_LENGTH = 16
RIGHT_CONTEXT_LENGTH = 4

# torchaudio's `_gain`: 10 ** (0.05 * decibel) with decibel = 2 * 20 * log10(int16 max), i.e. 32767 ** 2
# (written as torchaudio writes it, so the float is the same to the last bit).
_DECIBEL = 2 * 20 * math.log10(32767)
GAIN = pow(10, 0.05 * _DECIBEL)


@dataclasses.dataclass(frozen=True)
class MelConfig:
    """Settings of the mel spectrogram (torchaudio.transforms.MelSpectrogram's, other arguments at defaults).

    Attributes:
        sample_rate: Hz of the input waveform.
        n_fft: FFT size and window length (win_length = n_fft).
        hop_length: samples between frames.
        n_mels: mel bins D.
    """

    sample_rate: int = SAMPLE_RATE
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    n_mels: int = N_MELS

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
                raise ValueError(f"MelConfig.{name}: expected a positive int, got {value!r}")
        if self.n_fft < 2:
            raise ValueError(f"MelConfig.n_fft: expected at least 2, got {self.n_fft}")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def min_samples(self) -> int:
        """Fewest samples an utterance may have: reflect padding needs more than n_fft // 2 samples."""
        return self.n_fft // 2 + 1


# ----------------------------------------------------------------------------------------------------------
# Mel filterbank and window (numpy, built once per config)


def _hz_to_mel(freq: float) -> float:
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    """As torchaudio computes it on float32 tensors: float32 arithmetic, but a correctly rounded power
    (torch's vectorized float32 pow is within an ulp of that; numpy's float32 power is not as close)."""
    f32 = np.float32
    power = (10.0 ** (mels.astype(f32) / f32(2595.0)).astype(np.float64)).astype(f32)
    return f32(700.0) * (power - f32(1.0))


def _torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace in float32: float32 step, the first half counted from start, the second from end."""
    f32 = np.float32
    start, end = f32(start), f32(end)
    step = (end - start) / f32(steps - 1)
    index = np.arange(steps)
    from_start = start + step * index.astype(f32)
    from_end = end - step * (steps - 1 - index).astype(f32)
    return np.where(index < steps // 2, from_start, from_end).astype(f32)


@functools.lru_cache(maxsize=16)
def mel_filterbank(config: MelConfig = MelConfig()) -> np.ndarray:
    """torchaudio.functional.melscale_fbanks(n_freqs, 0, sample_rate / 2, n_mels, sample_rate, None, "htk").

    Returns:
        (n_fft // 2 + 1, n_mels) float32, read-only; column j is the triangle of mel bin j.
    """
    all_freqs = _torch_linspace(0, config.sample_rate // 2, config.n_freqs)
    m_min = _hz_to_mel(0.0)
    m_max = _hz_to_mel(float(config.sample_rate // 2))  # torchaudio's f_max default
    m_pts = _torch_linspace(m_min, m_max, config.n_mels + 2)
    f_pts = _mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down_slopes = (np.float32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up_slopes = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(np.float32(0.0), np.minimum(down_slopes, up_slopes)).astype(np.float32)
    fb.setflags(write=False)
    return fb


@functools.lru_cache(maxsize=16)
def _hann_window(n_fft: int) -> np.ndarray:
    """torch.hann_window(n_fft) (periodic)."""
    n = np.arange(n_fft, dtype=np.float64)
    window = (0.5 - 0.5 * np.cos(2.0 * math.pi * n / n_fft)).astype(np.float32)
    window.setflags(write=False)
    return window


# ----------------------------------------------------------------------------------------------------------
# Input checks


def _check_waveform(waveform: Array, config: MelConfig, sample_rate: int | None) -> Array:
    if sample_rate is not None and sample_rate != config.sample_rate:
        raise ValueError(
            f"sample_rate: expected {config.sample_rate} (MelConfig.sample_rate; resample the audio first), "
            f"got {sample_rate!r}"
        )
    if not hasattr(waveform, "dtype"):
        waveform = np.asarray(waveform)
    if waveform.ndim not in (1, 2):
        raise ValueError(f"waveform: expected shape (N,) or (B, N), got {tuple(waveform.shape)}")
    if not jnp.issubdtype(waveform.dtype, jnp.floating):
        raise TypeError(
            f"waveform: expected a floating dtype (samples in [-1, 1]; convert int16 PCM with x / 32768), "
            f"got {waveform.dtype}"
        )
    num_samples = waveform.shape[-1]
    if num_samples == 0 or (waveform.ndim == 2 and waveform.shape[0] == 0):
        raise ValueError(f"waveform: expected a non-empty waveform, got shape {tuple(waveform.shape)}")
    if num_samples < config.min_samples:
        raise ValueError(
            f"waveform: expected at least n_fft // 2 + 1 = {config.min_samples} samples (reflect padding), "
            f"got {num_samples}"
        )
    if _checks.is_concrete(waveform) and not bool(jnp.isfinite(waveform).all()):
        bad = np.argwhere(~np.isfinite(np.asarray(waveform, dtype=np.float32)))
        if bad.size:
            raise ValueError(
                f"waveform: expected finite samples, got {bad.shape[0]} NaN or Inf value(s), "
                f"the first at index {tuple(int(i) for i in bad[0])}"
            )
    return waveform


def _check_lengths(lengths: Array | None, waveform: Array, config: MelConfig) -> Array | None:
    if lengths is None:
        return None
    if not hasattr(lengths, "dtype"):
        lengths = np.asarray(lengths)
    expected = waveform.shape[:-1] if waveform.ndim == 2 else (1,)
    if tuple(lengths.shape) != tuple(expected) and not (waveform.ndim == 1 and lengths.ndim == 0):
        raise ValueError(f"lengths: expected shape {tuple(expected)}, got {tuple(lengths.shape)}")
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths: expected an integer dtype, got {lengths.dtype}")
    if _checks.is_concrete(lengths):
        values = np.asarray(lengths).reshape(-1)
        low, high = config.min_samples, waveform.shape[-1]
        bad = (values < low) | (values > high)
        if bad.any():
            raise ValueError(
                f"lengths: expected values in [{low}, {high}] (at least n_fft // 2 + 1 samples, at most N), "
                f"got {values[bad].tolist()}"
            )
    return lengths


# ----------------------------------------------------------------------------------------------------------
# The computation (pure, jit-able; inputs already checked)


def frame_lengths(lengths: Array, config: MelConfig = MelConfig()) -> Array:
    """Frames an utterance of ``lengths`` samples gives with center=True: lengths // hop_length + 1."""
    return lengths // config.hop_length + 1


def _frames(waveform: Array, lengths: Array, config: MelConfig) -> Array:
    """(B, N) float32, (B,) int32 -> (B, T, n_fft) windowed frames, T = N // hop + 1, reflected per row."""
    num_samples = waveform.shape[-1]
    num_frames = num_samples // config.hop_length + 1
    pad = config.n_fft // 2
    index = (
        jnp.arange(num_frames, dtype=jnp.int32)[:, None] * config.hop_length
        + jnp.arange(config.n_fft, dtype=jnp.int32)[None, :]
        - pad
    )  # (T, n_fft) positions in the unpadded utterance
    last = (lengths - 1).astype(jnp.int32)[:, None, None]  # (B, 1, 1)
    index = jnp.abs(index)[None]  # reflect at the start
    index = jnp.where(index > last, 2 * last - index, index)  # reflect at each utterance's own end
    index = jnp.clip(index, 0, num_samples - 1)  # frames past the end are masked later
    frames = jnp.take_along_axis(waveform, index.reshape(waveform.shape[0], -1), axis=1)
    frames = frames.reshape(waveform.shape[0], num_frames, config.n_fft)
    return frames * jnp.asarray(_hann_window(config.n_fft))


def _mel(waveform: Array, lengths: Array, config: MelConfig) -> Array:
    """(B, N), (B,) -> (B, T, n_mels) power mel spectrogram, frames past each length zeroed."""
    spectrum = jnp.fft.rfft(_frames(waveform, lengths, config), n=config.n_fft, axis=-1)
    power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
    mel = jnp.matmul(power, jnp.asarray(mel_filterbank(config)), precision=jax.lax.Precision.HIGHEST)
    valid = jnp.arange(mel.shape[1])[None, :] < frame_lengths(lengths, config)[:, None]
    return jnp.where(valid[..., None], mel, 0.0)


def piecewise_linear_log(x: Array) -> Array:
    """torchaudio's ``_piecewise_linear_log``, quirk included.

    torchaudio applies two masked in-place assignments one after the other: first x = log(x) where x > e,
    then x = x / e where (the updated) x <= e. So values in (e, e ** e] get log(x) / e, values <= e get x / e,
    values above e ** e get log(x).
    """
    x = jnp.asarray(x)
    x = jnp.where(x > math.e, jnp.log(jnp.where(x > math.e, x, 1.0)), x)
    return jnp.where(x <= math.e, x / math.e, x)


def _log_mel(waveform: Array, lengths: Array, config: MelConfig) -> Array:
    return piecewise_linear_log(_mel(waveform, lengths, config) * GAIN)


def _as_batch(waveform: Array, lengths: Array | None) -> tuple[Array, Array]:
    waveform = jnp.asarray(waveform).astype(jnp.float32)
    if waveform.ndim == 1:
        waveform = waveform[None]
    if lengths is None:
        lengths = jnp.full((waveform.shape[0],), waveform.shape[-1], dtype=jnp.int32)
    else:
        lengths = jnp.asarray(lengths).astype(jnp.int32).reshape(waveform.shape[0])
    return waveform, lengths


@functools.partial(jax.jit, static_argnames=("config",))
def _mel_jit(waveform, lengths, config):
    return _mel(*_as_batch(waveform, lengths), config)


@functools.partial(jax.jit, static_argnames=("config",))
def _log_mel_jit(waveform, lengths, config):
    return _log_mel(*_as_batch(waveform, lengths), config)


@functools.partial(jax.jit, static_argnames=("config", "right_padding"))
def _extract_jit(waveform, lengths, mean, invstddev, config, right_padding):
    waveform, lengths = _as_batch(waveform, lengths)
    features = (_log_mel(waveform, lengths, config) - mean) * invstddev
    num_frames = frame_lengths(lengths, config)
    valid = jnp.arange(features.shape[1])[None, :] < num_frames[:, None]
    features = jnp.where(valid[..., None], features, 0.0)
    features = jnp.pad(features, ((0, 0), (0, right_padding), (0, 0)))
    return features, num_frames + right_padding


def _unbatch(x: Array, waveform: Array) -> Array:
    return x[0] if waveform.ndim == 1 else x


# ----------------------------------------------------------------------------------------------------------
# Public functions


def mel_spectrogram(
    waveform: Array,
    lengths: Array | None = None,
    *,
    config: MelConfig = MelConfig(),
    sample_rate: int | None = None,
) -> Array:
    """torchaudio.transforms.MelSpectrogram(sample_rate, n_fft, n_mels, hop_length)(w).transpose(-1, -2).

    Args:
        waveform: (N,) or (B, N) float samples (any float dtype; computed in float32).
        lengths: (B,) int samples of each utterance (default: all N). Each utterance gets the frames
            torchaudio gives it alone; frames past ``frame_lengths(lengths)`` are zero.
        config: the mel settings (static).
        sample_rate: if given, must equal ``config.sample_rate`` (a guard against unresampled audio).

    Returns:
        (T, n_mels) or (B, T, n_mels) float32 power mel spectrogram, T = N // hop_length + 1.
    """
    waveform = _check_waveform(waveform, config, sample_rate)
    lengths = _check_lengths(lengths, waveform, config)
    return _unbatch(_mel_jit(waveform, lengths, config), waveform)


def log_mel_spectrogram(
    waveform: Array,
    lengths: Array | None = None,
    *,
    config: MelConfig = MelConfig(),
    sample_rate: int | None = None,
) -> Array:
    """The pipeline's features before normalization: piecewise_linear_log(mel_spectrogram(waveform) * GAIN).

    Same arguments as :func:`mel_spectrogram`. Returns (T, n_mels) or (B, T, n_mels) float32; frames past each
    utterance's length are zero. These are what :func:`compute_global_stats` takes.
    """
    waveform = _check_waveform(waveform, config, sample_rate)
    lengths = _check_lengths(lengths, waveform, config)
    return _unbatch(_log_mel_jit(waveform, lengths, config), waveform)


def extract_features(
    waveform: Array,
    global_stats: GlobalStats,
    lengths: Array | None = None,
    *,
    right_padding: int = 0,
    config: MelConfig = MelConfig(),
    sample_rate: int | None = None,
) -> tuple[Array, Array]:
    """The Emformer RNN-T pipeline's features: log mel, normalization, then ``right_padding`` zero frames.

    ``right_padding=RIGHT_PADDING`` (4) is torchaudio's ``get_feature_extractor()`` (full utterance);
    ``right_padding=0`` is ``get_streaming_feature_extractor()`` (one chunk of a stream).

    Args:
        waveform: (N,) or (B, N) float samples.
        global_stats: normalization statistics with D = config.n_mels features.
        lengths: (B,) int samples of each utterance (default: all N).
        right_padding: zero frames appended after each utterance's frames (static).
        config: the mel settings (static).
        sample_rate: if given, must equal ``config.sample_rate``.

    Returns:
        features: (T + right_padding, D) for (N,) input, (B, T + right_padding, D) for (B, N), float32, with
            T = N // hop_length + 1. Utterance b's frames past ``feature_lengths[b]`` are zero.
        feature_lengths: (1,) or (B,) int32, lengths // hop_length + 1 + right_padding (torchaudio returns
            ``tensor([features.shape[0]])``, which is this for one utterance).
    """
    if (
        isinstance(right_padding, bool)
        or not isinstance(right_padding, int | np.integer)
        or right_padding < 0
    ):
        raise ValueError(f"right_padding: expected an int >= 0, got {right_padding!r}")
    if not isinstance(global_stats, GlobalStats):
        raise TypeError(f"global_stats: expected a GlobalStats, got {type(global_stats).__name__}")
    if np.shape(global_stats.mean) != (config.n_mels,) or np.shape(global_stats.invstddev) != (
        config.n_mels,
    ):
        raise ValueError(
            f"global_stats: expected mean and invstddev of shape ({config.n_mels},) (n_mels), got "
            f"{np.shape(global_stats.mean)} and {np.shape(global_stats.invstddev)}"
        )
    waveform = _check_waveform(waveform, config, sample_rate)
    lengths = _check_lengths(lengths, waveform, config)
    features, feature_lengths = _extract_jit(
        waveform, lengths, global_stats.mean, global_stats.invstddev, config, int(right_padding)
    )
    return _unbatch(features, waveform), feature_lengths
