"""An embedded speech-like dataset: audio synthesized from text, needing no download and no system tool.

Each letter of a 10-symbol alphabet is a sound of its own: five vowels (a harmonic source through a
letter-specific pair of formants), a nasal murmur (m), two formant glides (r rises, l falls), a hiss (s) and a
closure followed by a noise burst (k). An utterance is 1 to 4 words from a fixed 32-word vocabulary. Every
utterance draws its own speaker (pitch and pitch contour, vocal-tract length, spectral tilt, loudness) and its
own timing: each letter lasts 60 to 160 ms, neighbouring letters of a word cross-fade in the spectral domain
(coarticulation), words are separated by short pauses, and background noise of random colour is added at a
random SNR. No boundaries are given: a model must learn the transduction.

Synthesis is source-filter in the STFT domain: a sawtooth glottal source (for voiced letters) and white noise
(for unvoiced ones) are shaped frame by frame by the cross-faded letter envelopes, then overlap-added.
Everything is numpy and deterministic per (seed, split, index), so any utterance can be regenerated alone.

Example:
    >>> config = SynthConfig(seed=0)
    >>> train = generate_split(config, "train", 2000)     # list of Utterance
    >>> write_librispeech(train, "data/synth/train")        # <speaker>/<chapter>/<id>.flac + .trans.txt
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamformer.io import atomic_directory

__all__ = [
    "ALPHABET",
    "SPLITS",
    "VOCABULARY",
    "SynthConfig",
    "SynthDataset",
    "Utterance",
    "config_dict",
    "generate_split",
    "synthesize",
    "write_librispeech",
    "write_split",
]

SPLITS = ("train", "dev", "test")

# Short words over the alphabet, no letter doubled (two equal neighbours would merge into one long sound).
VOCABULARY = (
    "am", "as", "is", "us", "so", "me", "ski", "sir", "oak", "ore", "elk", "ask", "ram", "rim", "rose",
    "rise", "rake", "role", "mule", "mole", "lake", "like", "lime", "leak", "milk", "silk", "mask", "musk",
    "kilo", "kale", "slim", "lure",
)  # fmt: skip


@dataclass(frozen=True)
class _Letter:
    """How one letter sounds.

    formants: (frequency Hz at the start, frequency Hz at the end, bandwidth Hz, gain dB) per resonance;
        start and end differ for glides.
    voiced: 1.0 harmonic source, 0.0 noise source.
    gain_db: overall level of the letter relative to a vowel.
    closure: fraction of the letter that is silent before a decaying burst (0.0: no closure).
    """

    formants: tuple[tuple[float, float, float, float], ...]
    voiced: float
    gain_db: float = 0.0
    closure: float = 0.0


# Formant pairs sit far apart on the mel scale so that the letters are easy to tell apart.
_LETTERS: dict[str, _Letter] = {
    "i": _Letter(((280, 280, 60, 0), (2700, 2700, 150, -2), (3400, 3400, 250, -8)), 1.0),
    "e": _Letter(((480, 480, 70, 0), (2000, 2000, 120, -2), (2800, 2800, 200, -8)), 1.0),
    "a": _Letter(((850, 850, 90, 0), (1450, 1450, 110, -1), (2600, 2600, 200, -10)), 1.0),
    "o": _Letter(((560, 560, 70, 0), (880, 880, 80, -1), (2500, 2500, 200, -14)), 1.0),
    "u": _Letter(((300, 300, 60, 0), (700, 700, 80, -3), (2300, 2300, 200, -18)), 1.0),
    "m": _Letter(((230, 230, 50, 0), (1200, 1200, 300, -24)), 1.0, gain_db=-3.0),
    "r": _Letter(((450, 450, 80, 0), (1000, 1900, 120, 0), (1600, 2500, 200, -10)), 1.0, gain_db=-2.0),
    "l": _Letter(((400, 400, 70, 0), (2100, 950, 120, 0), (3000, 3000, 250, -10)), 1.0, gain_db=-2.0),
    "s": _Letter(((6000, 6000, 2200, 0),), 0.0, gain_db=-4.0),
    "k": _Letter(((2400, 2400, 700, 0), (4000, 4000, 1500, -8)), 0.0, gain_db=2.0, closure=0.3),
}
ALPHABET = tuple(sorted(_LETTERS))

_N_FFT = 512
_HOP = 128


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines the dataset; two equal configs give identical audio.

    Ranges are (low, high) and drawn uniformly, per utterance unless said otherwise.

    seed: base seed; an utterance's generator is seeded by (seed, split, index).
    sample_rate: Hz of the audio.
    vocabulary: the words transcripts are drawn from (letters of ALPHABET only).
    words_per_utterance: number of words (inclusive range).
    letter_ms: duration of one letter (per letter), before the speaking rate.
    speaking_rate: factor dividing all letter durations.
    coarticulation_ms: cross-fade length between neighbouring letters of a word (per boundary).
    pause_ms: silence between words.
    edge_ms: silence before the first and after the last word.
    f0_hz: mean pitch.
    formant_scale: vocal-tract length factor multiplying every formant frequency.
    tilt_db_per_octave: extra spectral slope of the voice.
    snr_db: speech-to-noise ratio of the background noise.
    noise_colour: spectral exponent of the noise (0 white, 1 pink, 2 brown).
    level_dbfs: RMS level of the final utterance.
    """

    seed: int = 0
    sample_rate: int = 16000
    vocabulary: tuple[str, ...] = VOCABULARY
    words_per_utterance: tuple[int, int] = (1, 4)
    letter_ms: tuple[float, float] = (60.0, 160.0)
    speaking_rate: tuple[float, float] = (0.9, 1.15)
    coarticulation_ms: tuple[float, float] = (10.0, 40.0)
    pause_ms: tuple[float, float] = (100.0, 250.0)
    edge_ms: tuple[float, float] = (50.0, 250.0)
    f0_hz: tuple[float, float] = (90.0, 260.0)
    formant_scale: tuple[float, float] = (0.93, 1.07)
    tilt_db_per_octave: tuple[float, float] = (-4.0, 0.0)
    snr_db: tuple[float, float] = (12.0, 30.0)
    noise_colour: tuple[float, float] = (0.0, 1.0)
    level_dbfs: tuple[float, float] = (-32.0, -16.0)

    def __post_init__(self) -> None:
        if not self.vocabulary:
            raise ValueError("vocabulary: expected at least one word, got an empty tuple")
        for word in self.vocabulary:
            bad = sorted(set(word) - set(ALPHABET))
            if not word or bad:
                raise ValueError(
                    f"vocabulary: expected non-empty words over {''.join(ALPHABET)!r}, got {word!r}"
                )
        low, high = self.words_per_utterance
        if not 1 <= low <= high:
            raise ValueError(
                f"words_per_utterance: expected 1 <= low <= high, got {self.words_per_utterance}"
            )
        if self.sample_rate < 16000:
            raise ValueError(
                f"sample_rate: expected >= 16000 (the hiss sits at 6 kHz), got {self.sample_rate}"
            )


@dataclass(frozen=True)
class Utterance:
    """One utterance: audio (N,) float32 in [-1, 1] at the config's sample rate, its transcript and its id.

    The id has LibriSpeech's form "<speaker>-<chapter>-<utterance>" (all digits). ``word_spans`` holds each
    word's true (start, end) in seconds when the synthesiser knows them (empty otherwise).
    """

    audio: np.ndarray
    text: str
    id: str
    word_spans: tuple[tuple[float, float], ...] = ()


def _utterance_id(split: str, index: int) -> str:
    return f"{SPLITS.index(split) + 1}-{index // 1000}-{index % 1000:04d}"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int | None = None):
    return rng.uniform(bounds[0], bounds[1], size)


def _stft(signal: np.ndarray, window: np.ndarray) -> np.ndarray:
    """(N,) -> (frames, N_FFT // 2 + 1); frame t is centred on sample t * HOP (zero-padded at the ends)."""
    padded = np.pad(signal, (_N_FFT // 2, _N_FFT // 2 + _HOP))
    frames = np.lib.stride_tricks.sliding_window_view(padded, _N_FFT)[::_HOP]
    return np.fft.rfft(frames * window, axis=-1)


def _istft(spectrum: np.ndarray, window: np.ndarray, length: int) -> np.ndarray:
    frames = np.fft.irfft(spectrum, n=_N_FFT, axis=-1) * window
    num_frames = frames.shape[0]
    total = (num_frames - 1) * _HOP + _N_FFT
    # Overlap-add: N_FFT is a multiple of HOP, so add N_FFT // HOP shifted copies of the frame grid.
    ratio = _N_FFT // _HOP
    out = np.zeros(total + _N_FFT)
    norm = np.zeros(total + _N_FFT)
    chunks = frames.reshape(num_frames, ratio, _HOP)
    window_chunks = (window**2).reshape(ratio, _HOP)
    for r in range(ratio):
        block = out[r * _HOP : r * _HOP + num_frames * _HOP].reshape(num_frames, _HOP)
        block += chunks[:, r]
        norm_block = norm[r * _HOP : r * _HOP + num_frames * _HOP].reshape(num_frames, _HOP)
        norm_block += window_chunks[r]
    out = out / np.maximum(norm, 1e-3)
    return out[_N_FFT // 2 : _N_FFT // 2 + length]


def synthesize(config: SynthConfig, split: str, index: int) -> Utterance:
    """The utterance number ``index`` of ``split``: a pure function of (config, split, index)."""
    _check_split(split)
    if index < 0:
        raise ValueError(f"index: expected >= 0, got {index}")
    rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
    sr = config.sample_rate

    # Transcript and timeline (in samples).
    num_words = int(rng.integers(config.words_per_utterance[0], config.words_per_utterance[1] + 1))
    words = [config.vocabulary[i] for i in rng.integers(0, len(config.vocabulary), num_words)]
    rate = _uniform(rng, config.speaking_rate)
    letters: list[str] = []
    starts: list[float] = []
    ends: list[float] = []
    fade_in: list[float] = []
    fade_out: list[float] = []
    time = _uniform(rng, config.edge_ms) * sr / 1000
    onset = 0.008 * sr  # fade at a word's edges, where the neighbour is silence
    word_spans = []
    for w, word in enumerate(words):
        if w > 0:
            time += _uniform(rng, config.pause_ms) * sr / 1000
        word_start = time
        durations = _uniform(rng, config.letter_ms, len(word)) * sr / 1000 / rate
        fades = _uniform(rng, config.coarticulation_ms, len(word) - 1) * sr / 1000
        for j, letter in enumerate(word):
            letters.append(letter)
            starts.append(time)
            time += durations[j]
            ends.append(time)
            # A cross-fade never takes more than half of either letter.
            fade_in.append(onset if j == 0 else min(fades[j - 1], durations[j - 1] / 2, durations[j] / 2))
            fade_out.append(
                onset if j == len(word) - 1 else min(fades[j], durations[j] / 2, durations[j + 1] / 2)
            )
        word_spans.append((float(word_start / sr), float(time / sr)))
    length = int(time + _uniform(rng, config.edge_ms) * sr / 1000)

    # Speaker.
    f0_mean = _uniform(rng, config.f0_hz)
    scale = _uniform(rng, config.formant_scale)
    tilt = _uniform(rng, config.tilt_db_per_octave)
    window = np.hanning(_N_FFT + 1)[:-1]
    num_frames = length // _HOP + 2
    centres = np.arange(num_frames) * _HOP
    freqs = np.fft.rfftfreq(_N_FFT, 1 / sr)

    # Cross-faded letter envelopes: frame weights of neighbouring letters sum to one inside a word.
    voiced_env = np.zeros((num_frames, freqs.size))
    noise_env = np.zeros((num_frames, freqs.size))
    jitter = 1 + 0.04 * rng.standard_normal((len(letters), 4))
    for n, letter in enumerate(letters):
        spec = _LETTERS[letter]
        lo = max(int((starts[n] - fade_in[n] / 2) // _HOP), 0)
        hi = min(int((ends[n] + fade_out[n] / 2) // _HOP) + 2, num_frames)
        t = centres[lo:hi]
        weight = np.clip((t - starts[n] + fade_in[n] / 2) / fade_in[n], 0, 1)
        weight *= np.clip((ends[n] + fade_out[n] / 2 - t) / fade_out[n], 0, 1)
        position = np.clip((t - starts[n]) / (ends[n] - starts[n]), 0, 1)[:, None]
        envelope = np.zeros((t.size, freqs.size))
        for k, (f_start, f_end, bandwidth, gain) in enumerate(spec.formants):
            centre = (f_start + (f_end - f_start) * position) * scale * jitter[n, k % 4]
            envelope += 10 ** (gain / 20) / (1 + ((freqs - centre) / (bandwidth / 2)) ** 2)
        amplitude = np.full(t.size, 10 ** (spec.gain_db / 20))
        if spec.closure:
            p = position[:, 0]
            amplitude *= np.where(p < spec.closure, 0.0, np.exp(-4 * (p - spec.closure) / (1 - spec.closure)))
        envelope *= (weight * amplitude)[:, None]
        voiced_env[lo:hi] += spec.voiced * envelope
        noise_env[lo:hi] += (1 - spec.voiced) * envelope

    # Sources: a sawtooth at a drifting pitch (declination, vibrato, jitter) and white noise.
    seconds = np.arange(length) / sr
    duration = length / sr
    contour = (
        1
        + _uniform(rng, (-0.15, 0.1)) * seconds / duration
        + 0.02 * np.sin(2 * np.pi * _uniform(rng, (4.0, 6.0)) * seconds + _uniform(rng, (0, 2 * np.pi)))
    )
    walk = np.cumsum(rng.standard_normal(num_frames)) * 0.01
    contour *= 1 + np.interp(np.arange(length), centres, walk - walk.mean())
    phase = np.cumsum(f0_mean * contour / sr) + rng.uniform()
    saw = 2 * (phase % 1.0) - 1
    # A voice's tilt relative to the sawtooth's -6 dB/octave, referenced to 500 Hz.
    tilt_gain = (np.maximum(freqs, 50) / 500) ** (tilt / 6.02)
    voiced_spec = _stft(saw, window) * voiced_env[:num_frames] * tilt_gain
    noise_spec = _stft(rng.standard_normal(length), window) * noise_env[:num_frames] * 0.35
    speech = _istft(voiced_spec + noise_spec, window, length)

    # Background noise of random colour at a random SNR, then the utterance's level.
    colour = _uniform(rng, config.noise_colour)
    fft_size = 1 << (length - 1).bit_length()  # a power of two: FFTs of odd lengths are slow
    noise_fft = np.fft.rfft(rng.standard_normal(fft_size))
    noise_fft *= np.maximum(np.fft.rfftfreq(fft_size, 1 / sr), 20.0) ** (-colour / 2)
    noise = np.fft.irfft(noise_fft, n=fft_size)[:length]
    speech_power = np.mean(speech**2) + 1e-20
    snr = _uniform(rng, config.snr_db)
    noise *= np.sqrt(speech_power / (np.mean(noise**2) + 1e-20) / 10 ** (snr / 10))
    audio = speech + noise
    level = _uniform(rng, config.level_dbfs)
    audio *= 10 ** (level / 20) / np.sqrt(np.mean(audio**2) + 1e-20)
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
    return Utterance(
        audio=audio, text=" ".join(words), id=_utterance_id(split, index), word_spans=tuple(word_spans)
    )


class SynthDataset(Sequence):
    """``size`` utterances of ``split``, generated on access (indexable, len(), iterable)."""

    def __init__(self, config: SynthConfig, split: str, size: int) -> None:
        _check_split(split)
        if size < 0:
            raise ValueError(f"size: expected >= 0, got {size}")
        self.config, self.split, self.size = config, split, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Utterance:  # type: ignore[override]
        if not -self.size <= index < self.size:
            raise IndexError(f"index: expected in [-{self.size}, {self.size}), got {index}")
        return synthesize(self.config, self.split, index % self.size)

    def __iter__(self) -> Iterator[Utterance]:
        return (synthesize(self.config, self.split, i) for i in range(self.size))


def generate_split(config: SynthConfig, split: str, num_utterances: int) -> list[Utterance]:
    """The first ``num_utterances`` utterances of ``split`` ("train", "dev" or "test").

    Splits are disjoint draws (different seeds): the same words, unseen speakers and timings.
    """
    return list(SynthDataset(config, split, num_utterances))


def write_librispeech(
    utterances: Sequence[Utterance],
    root: str | os.PathLike,
    *,
    sample_rate: int = 16000,
    audio_format: str = "flac",
    overwrite: bool = False,
) -> Path:
    """Write utterances in LibriSpeech layout under ``root``; returns ``root``.

    Layout: <root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.<flac|wav> (16-bit PCM) and one
    <speaker>-<chapter>.trans.txt per chapter with lines "<id> <text>". The tree is built in a temporary
    sibling folder and renamed into place, so ``root`` is either absent or complete. Needs the ``soundfile``
    package.
    """
    if audio_format not in ("flac", "wav"):
        raise ValueError(f"audio_format: expected 'flac' or 'wav', got {audio_format!r}")
    sf = import_soundfile()
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"root: {root} exists; pass overwrite=True to replace it")
    with atomic_directory(root) as staging:
        chapters: dict[tuple[str, str], list[str]] = {}
        for utt in utterances:
            parts = utt.id.split("-")
            if len(parts) != 3 or not all(p.isdigit() for p in parts):
                raise ValueError(
                    f"utterances: expected ids '<speaker>-<chapter>-<utt>' of digits, got {utt.id!r}"
                )
            if "\n" in utt.text:
                raise ValueError(f"utterances: text of {utt.id} contains a newline")
            folder = staging / parts[0] / parts[1]
            folder.mkdir(parents=True, exist_ok=True)
            sf.write(str(folder / f"{utt.id}.{audio_format}"), utt.audio, sample_rate, subtype="PCM_16")
            chapters.setdefault((parts[0], parts[1]), []).append(f"{utt.id} {utt.text}")
        for (speaker, chapter), lines in chapters.items():
            path = staging / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def write_split(
    config: SynthConfig,
    split: str,
    num_utterances: int,
    root: str | os.PathLike,
    *,
    audio_format: str = "flac",
    overwrite: bool = False,
) -> Path:
    """Generate ``num_utterances`` of ``split`` and write them with ``write_librispeech`` under ``root``."""
    utterances = generate_split(config, split, num_utterances)
    return write_librispeech(
        utterances, root, sample_rate=config.sample_rate, audio_format=audio_format, overwrite=overwrite
    )


def import_soundfile():
    """The soundfile module, or an ImportError that says how to install it."""
    try:
        import soundfile
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading and writing audio files needs the 'soundfile' package: pip install 'streamformer[train]'"
        ) from error
    return soundfile


def config_dict(config: SynthConfig) -> dict:
    """The config as a JSON-ready dict (for logging it next to a training run)."""
    return dataclasses.asdict(config)
