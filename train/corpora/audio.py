"""Speech corpora on disk: LibriSpeech's layout, JSON-lines manifests, and audio files read as mono float32.

- ``list_librispeech(root)``: <root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac|.wav with
  <speaker>-<chapter>.trans.txt lines "<id> <TEXT>".
- ``read_manifest(path)``: JSON lines {"audio": path, "text": str} (NeMo's "audio_filepath" works too);
  paths are relative to the manifest's folder unless absolute.
- ``load_audio(path, sample_rate)``: mono float32; other sample rates are resampled (windowed-sinc, logged),
  multi-channel audio is averaged to mono, empty or silent files raise naming the file.

Audio I/O needs the optional ``soundfile`` package (``pip install 'streamformer[train]'``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synth import Utterance, import_soundfile

__all__ = [
    "AudioEntry",
    "StreamingResampler",
    "audio_of",
    "list_librispeech",
    "load_audio",
    "read_manifest",
    "resample",
]

logger = logging.getLogger(__name__)

_AUDIO_SUFFIXES = (".flac", ".wav")
_MAX_LISTED = 20


@dataclass(frozen=True)
class AudioEntry:
    """One utterance on disk: its id, audio file and transcript (as written in the corpus)."""

    id: str
    path: Path
    text: str


# ----------------------------------------------------------------------------------------------------
# Audio.


@functools.lru_cache(maxsize=8)
def _resample_table(up: int, down: int) -> tuple[int, np.ndarray, np.ndarray]:
    """resample's polyphase filter (built once per rate pair: np.i0 over it costs more than the filtering)."""
    cutoff = 0.945 * min(1.0, up / down)  # in cycles per input sample, relative to the input Nyquist
    half_width = 32 / cutoff  # filter half-length in input samples
    reach = int(math.ceil(half_width))
    offsets = np.arange(-reach + 1, reach + 1)  # input taps around floor(t)
    # phase p: output time t = i0 + p / up (input samples); tap k sits at distance k - p / up.
    distance = offsets[None, :] - np.arange(up)[:, None] / up
    beta = 12.0
    inside = np.clip(1 - (distance / half_width) ** 2, 0, None)
    table = cutoff * np.sinc(cutoff * distance) * np.i0(beta * np.sqrt(inside)) / np.i0(beta)
    table[np.abs(distance) > half_width] = 0.0
    return reach, offsets, table


def _check_rates(orig_sample_rate: int, target_sample_rate: int) -> tuple[int, int]:
    """(up, down): the rational factor target / orig in lowest terms."""
    for name, rate in (("orig_sample_rate", orig_sample_rate), ("target_sample_rate", target_sample_rate)):
        if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
            raise ValueError(f"{name}: expected a positive integer number of Hz, got {rate!r}")
    g = math.gcd(int(orig_sample_rate), int(target_sample_rate))
    return int(target_sample_rate) // g, int(orig_sample_rate) // g


def _resampled(x: np.ndarray, x_start: int, x_end: int, n: np.ndarray, up: int, down: int) -> np.ndarray:
    """Output samples ``n`` (absolute indices) of the resampling by up / down of a signal whose samples
    [x_start, x_start + x.size) are ``x``; samples before 0 or from ``x_end`` on are zeros."""
    reach, offsets, table = _resample_table(up, down)
    base, phase = np.divmod(n * down, up)
    index = base[:, None] + offsets[None, :]
    inside = (index >= 0) & (index < x_end)
    local = np.clip(index - x_start, 0, max(x.size - 1, 0))
    taps = np.where(inside, x[local] if x.size else 0.0, 0.0)
    return np.einsum("nk,nk->n", taps, table[phase])


def resample(waveform: np.ndarray, orig_sample_rate: int, target_sample_rate: int) -> np.ndarray:
    """Resample (N,) audio by a rational factor with a Kaiser-windowed sinc (polyphase).

    The low-pass sits at 0.945 of the lower Nyquist frequency with 32 zero crossings per side (Kaiser
    beta 12): about -90 dB of stop-band. Returns float32 of length ceil(N * target / orig).
    ``StreamingResampler`` gives the same samples for audio that arrives in pieces.
    """
    up, down = _check_rates(orig_sample_rate, target_sample_rate)
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"waveform: expected shape (N,), got {x.shape}")
    if up == down:
        return x.astype(np.float32)
    num_out = int(math.ceil(x.size * up / down))
    out = np.empty(num_out)
    block = max(1, 2**20 // _resample_table(up, down)[1].size)
    for begin in range(0, num_out, block):
        n = np.arange(begin, min(begin + block, num_out))
        out[begin : begin + n.size] = _resampled(x, 0, x.size, n, up, down)
    return out.astype(np.float32)


class StreamingResampler:
    """``resample`` for audio that arrives in pieces (a live stream): ``push`` returns the output samples
    whose filter taps have all arrived, ``finish`` the rest; together they equal ``resample`` of the whole
    audio. Keeps only the input samples that outputs still to come read.

    Example:
        >>> resampler = StreamingResampler(8000, 16000)
        >>> out = [resampler.push(piece) for piece in pieces] + [resampler.finish()]
    """

    def __init__(self, orig_sample_rate: int, target_sample_rate: int):
        self.up, self.down = _check_rates(orig_sample_rate, target_sample_rate)
        self._reach = _resample_table(self.up, self.down)[0]
        self._kept = np.zeros(0)  # input samples from _kept_start on
        self._kept_start = self._received = self._emitted = 0

    def _emit(self, end: int, x_end: int) -> np.ndarray:
        n = np.arange(self._emitted, max(end, self._emitted))
        out = (
            _resampled(self._kept, self._kept_start, x_end, n, self.up, self.down) if n.size else np.zeros(0)
        )
        self._emitted = max(end, self._emitted)
        # The next output's first tap: floor(emitted * down / up) - reach + 1.
        keep_from = max(0, self._emitted * self.down // self.up - self._reach + 1)
        if keep_from > self._kept_start:
            self._kept = self._kept[keep_from - self._kept_start :]
            self._kept_start = keep_from
        return out.astype(np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Appends ``samples`` (n,); returns the output samples now complete (float32)."""
        samples = np.asarray(samples, dtype=np.float64)
        if samples.ndim != 1:
            raise ValueError(f"samples: expected shape (n,), got {samples.shape}")
        if self.up == self.down:
            return samples.astype(np.float32)
        self._kept = np.concatenate([self._kept, samples])
        self._received += samples.size
        # Output n reads inputs up to floor(n * down / up) + reach: complete once that one has arrived.
        complete = max(0, -(-(self._received - self._reach) * self.up // self.down))
        return self._emit(complete, self._received)

    def finish(self) -> np.ndarray:
        """The output samples left when the audio ends (samples past its end count as zeros)."""
        if self.up == self.down:
            return np.zeros(0, np.float32)
        return self._emit(-(-self._received * self.up // self.down), self._received)


def audio_of(item, sample_rate: int = 16000) -> np.ndarray:
    """The waveform of a corpus item: an ``Utterance``'s own audio (already at ``sample_rate``), or an
    ``AudioEntry``'s file loaded with ``load_audio``."""
    return item.audio if isinstance(item, Utterance) else load_audio(item.path, sample_rate)


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    resample_audio: bool = True,
    silence_threshold: float = 1e-4,
) -> np.ndarray:
    """Read an audio file as mono float32 (N,) at ``sample_rate``.

    Multi-channel audio is averaged to mono. A file at another rate is resampled (logged at INFO level), or,
    with resample_audio=False, rejected. Raises ValueError naming the file when it cannot be decoded, holds no
    samples, or is silent (peak amplitude <= silence_threshold, full scale being 1.0).
    """
    sf = import_soundfile()
    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as error:  # soundfile's LibsndfileError is a RuntimeError
        raise ValueError(f"{path}: cannot decode audio: {error}") from error
    if data.shape[0] == 0:
        raise ValueError(f"{path}: empty audio file (0 samples)")
    audio = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sample_rate:
        if not resample_audio:
            raise ValueError(
                f"{path}: expected sample rate {sample_rate} Hz, got {file_rate} Hz "
                "(pass resample_audio=True to resample)"
            )
        logger.info("resampling %s from %d Hz to %d Hz", path, file_rate, sample_rate)
        audio = resample(audio, file_rate, sample_rate)
    peak = float(np.max(np.abs(audio)))
    if not peak > silence_threshold:
        raise ValueError(
            f"{path}: silent audio (peak amplitude {peak:.3g} <= silence_threshold {silence_threshold})"
        )
    return np.ascontiguousarray(audio, dtype=np.float32)


def _raise_missing(what: str, missing: list[str]) -> None:
    listed = "\n  ".join(missing[:_MAX_LISTED])
    more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise FileNotFoundError(f"{what}: {len(missing)} audio file(s) missing:\n  {listed}{more}")


# ----------------------------------------------------------------------------------------------------
# Corpus readers.


def list_librispeech(root: str | os.PathLike) -> list[AudioEntry]:
    """The utterances of a LibriSpeech-layout tree, sorted by id.

    Expects <root>/.../<speaker>/<chapter>/<speaker>-<chapter>.trans.txt (at any depth, through symbolic links)
    with lines "<id> <TEXT>", and beside it
    <id>.flac or <id>.wav. Texts are returned as written (LibriSpeech's are upper case). Raises
    FileNotFoundError when there is no transcript file or when transcript lines have no audio (all listed),
    and ValueError for a malformed line (file and line number named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a LibriSpeech folder, {root} is not a directory")
    transcripts = sorted(  # symbolic links followed: a folder of links to train-clean-100, ... is one corpus
        Path(folder) / name
        for folder, _, names in os.walk(root, followlinks=True)
        for name in names
        if name.endswith(".trans.txt")
    )
    if not transcripts:
        raise FileNotFoundError(f"root: no '<speaker>-<chapter>.trans.txt' files under {root}")
    entries: list[AudioEntry] = []
    missing: list[str] = []
    for transcript in transcripts:
        for number, line in enumerate(transcript.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            if not text.strip():
                raise ValueError(f"{transcript}:{number}: expected '<id> <text>', got {line!r}")
            candidates = [transcript.parent / f"{utt_id}{suffix}" for suffix in _AUDIO_SUFFIXES]
            path = next((c for c in candidates if c.is_file()), None)
            if path is None:
                missing.append(f"{candidates[0].with_suffix('')}.{{flac,wav}}")
                continue
            entries.append(AudioEntry(id=utt_id, path=path, text=text.strip()))
    if missing:
        _raise_missing(f"root {root}", missing)
    return sorted(entries, key=lambda e: e.id)


def read_manifest(path: str | os.PathLike) -> list[AudioEntry]:
    """The utterances of a JSON-lines manifest, in file order.

    Each non-empty line is an object with "audio" (or NeMo's "audio_filepath") and "text"; other keys (e.g.
    "duration") are ignored. Relative audio paths are resolved against the manifest's folder. The id is the
    "id" key when present, else the audio file's stem. Raises ValueError for a malformed line (line number
    named) and FileNotFoundError listing every missing audio file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: manifest {path} does not exist")
    entries: list[AudioEntry] = []
    missing: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not valid JSON: {error}") from error
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        audio = record.get("audio", record.get("audio_filepath"))
        text = record.get("text")
        if not isinstance(audio, str) or not isinstance(text, str):
            raise ValueError(
                f"{path}:{number}: expected string keys 'audio' (or 'audio_filepath') and 'text', "
                f"got keys {sorted(record)}"
            )
        audio_path = Path(audio) if os.path.isabs(audio) else path.parent / audio
        if not audio_path.is_file():
            missing.append(str(audio_path))
            continue
        entries.append(AudioEntry(id=str(record.get("id", audio_path.stem)), path=audio_path, text=text))
    if missing:
        _raise_missing(f"manifest {path}", missing)
    return entries
