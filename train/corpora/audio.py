"""Reading speech corpora and batching them into a few static shapes for jit.

Readers return ``AudioEntry`` (id, path, text) lists; ``prepare_examples`` loads, featurizes and tokenizes
them (or the in-memory ``train.synth.Utterance``) into ``Example``s; ``batches`` groups examples of similar
length into buckets and pads each batch to its bucket's shape, so a jitted train step compiles once per
bucket.

- ``list_librispeech(root)``: <root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac|.wav with
  <speaker>-<chapter>.trans.txt lines "<id> <TEXT>".
- ``read_manifest(path)``: JSON lines {"audio": path, "text": str} (NeMo's "audio_filepath" works too);
  paths are relative to the manifest's folder unless absolute.
- ``load_audio(path, sample_rate)``: mono float32; other sample rates are resampled (windowed-sinc, logged),
  multi-channel audio is averaged to mono, empty or silent files raise naming the file.
- ``spec_augment``: jit-able SpecAugment that masks valid frames only.
- ``build_espeak_librispeech``: real (synthetic-voice) speech from espeak-ng when it is installed.

Audio I/O needs the optional ``soundfile`` package (``pip install 'streamformer[train]'``).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from train.synth import Utterance, import_soundfile, write_librispeech

__all__ = [
    "AudioEntry",
    "Batch",
    "EspeakNotFoundError",
    "Example",
    "batches",
    "build_espeak_librispeech",
    "list_librispeech",
    "audio_of",
    "load_audio",
    "make_buckets",
    "plan_batches",
    "prepare_examples",
    "read_manifest",
    "resample",
    "spec_augment",
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


@dataclass(frozen=True)
class Example:
    """One featurized, tokenized utterance: features (T, F) float32 and targets (U,) int32."""

    id: str
    text: str
    features: np.ndarray
    targets: np.ndarray


@dataclass(frozen=True)
class Batch:
    """A padded batch of static shape (one shape per bucket).

    features: (B, T + P, F) float32; row b holds its feature_lengths[b] valid frames first, then zeros (or
        pad_value). T is the bucket's frame count and P = right_pad_frames, so every sequence, even the
        longest of its bucket, is followed by at least P padding frames: the right context of its last
        segment.
    feature_lengths: (B,) int32, valid frames per row (the P padding frames not counted).
    targets: (B, U) int32 token ids, padded with target_pad_id after target_lengths[b].
    target_lengths: (B,) int32.
    valid: (B,) bool; False for the rows that fill a short final batch (copies of the batch's first example:
        weight them out of the loss).
    ids: the example ids, "" for fill rows.
    """

    features: np.ndarray
    feature_lengths: np.ndarray
    targets: np.ndarray
    target_lengths: np.ndarray
    valid: np.ndarray
    ids: tuple[str, ...]


class EspeakNotFoundError(RuntimeError):
    """espeak-ng is not installed (or not on PATH)."""


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


def resample(waveform: np.ndarray, orig_sample_rate: int, target_sample_rate: int) -> np.ndarray:
    """Resample (N,) audio by a rational factor with a Kaiser-windowed sinc (polyphase).

    The low-pass sits at 0.945 of the lower Nyquist frequency with 32 zero crossings per side (Kaiser
    beta 12): about -90 dB of stop-band. Returns float32 of length ceil(N * target / orig).
    """
    if orig_sample_rate <= 0 or target_sample_rate <= 0:
        raise ValueError(
            f"sample rates: expected positive integers, got {orig_sample_rate} -> {target_sample_rate}"
        )
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"waveform: expected shape (N,), got {x.shape}")
    if orig_sample_rate == target_sample_rate:
        return x.astype(np.float32)
    g = math.gcd(orig_sample_rate, target_sample_rate)
    up, down = target_sample_rate // g, orig_sample_rate // g
    reach, offsets, table = _resample_table(up, down)
    num_out = int(math.ceil(x.size * up / down))
    padded = np.pad(x, (reach, reach + 1))
    out = np.empty(num_out)
    block = max(1, 2**20 // offsets.size)
    for begin in range(0, num_out, block):
        n = np.arange(begin, min(begin + block, num_out))
        base, phase = np.divmod(n * down, up)
        taps = padded[base[:, None] + offsets[None, :] + reach]
        out[begin : begin + n.size] = np.einsum("nk,nk->n", taps, table[phase])
    return out.astype(np.float32)


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

    Expects <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt with lines "<id> <TEXT>", and beside it
    <id>.flac or <id>.wav. Texts are returned as written (LibriSpeech's are upper case). Raises
    FileNotFoundError when there is no transcript file or when transcript lines have no audio (all listed),
    and ValueError for a malformed line (file and line number named).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root: expected a LibriSpeech folder, {root} is not a directory")
    transcripts = sorted(root.rglob("*.trans.txt"))
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


# ----------------------------------------------------------------------------------------------------
# Examples and batching.


def prepare_examples(
    items: Iterable[AudioEntry | Utterance],
    featurize: Callable[[np.ndarray], np.ndarray],
    encode: Callable[[str], Sequence[int]],
    *,
    sample_rate: int = 16000,
) -> list[Example]:
    """Load (AudioEntry) or take (Utterance, already at ``sample_rate``) the audio, featurize and tokenize it.

    featurize: (N,) float32 waveform -> (T, F) features, e.g. streamformer's log-mel front end.
    encode: text -> token ids (e.g. a sentencepiece model's encode).
    """
    examples = []
    for item in items:
        features = np.asarray(featurize(audio_of(item, sample_rate)), dtype=np.float32)
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(
                f"featurize: expected (T, F) features with T >= 1 for {item.id}, got {features.shape}"
            )
        targets = np.asarray(encode(item.text), dtype=np.int32).reshape(-1)
        examples.append(Example(id=item.id, text=item.text, features=features, targets=targets))
    return examples


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def make_buckets(lengths: Sequence[int] | np.ndarray, num_buckets: int, frame_multiple: int = 1) -> list[int]:
    """Bucket sizes (frames) splitting ``lengths`` into about equally full buckets.

    Sizes are the length quantiles k / num_buckets (k = 1..num_buckets) rounded up to ``frame_multiple``
    (e.g. segment_length * time_reduction_stride, so each bucket is a whole number of segments); duplicates
    merge, so fewer than num_buckets may come back. The last size covers the longest example.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"lengths: expected a non-empty 1-D sequence, got shape {lengths.shape}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets: expected >= 1, got {num_buckets}")
    if frame_multiple < 1:
        raise ValueError(f"frame_multiple: expected >= 1, got {frame_multiple}")
    quantiles = np.quantile(lengths, np.arange(1, num_buckets + 1) / num_buckets, method="higher")
    sizes = sorted({_round_up(max(q, 1), frame_multiple) for q in quantiles})
    sizes[-1] = max(sizes[-1], _round_up(max(lengths.max(), 1), frame_multiple))
    return sizes


def _bucket_index(lengths: np.ndarray, bucket_frames: Sequence[int]) -> np.ndarray:
    bounds = np.asarray(bucket_frames)
    if bounds.ndim != 1 or bounds.size == 0 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"bucket_frames: expected strictly increasing sizes, got {list(bucket_frames)}")
    index = np.searchsorted(bounds, lengths, side="left")
    too_long = index == bounds.size
    if np.any(too_long):
        raise ValueError(
            f"bucket_frames: {int(too_long.sum())} example(s) are longer than the largest bucket "
            f"({int(bounds[-1])} frames; longest {int(lengths.max())}): add a larger bucket or filter them"
        )
    return index


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    bucket_frames: Sequence[int],
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
) -> list[np.ndarray]:
    """The batches of one epoch as arrays of example indices, each within one bucket.

    With shuffle, examples are shuffled within buckets and batches across buckets by a generator seeded with
    (seed, epoch): the order is a pure function of its arguments, so a resumed run sees the same data. Without
    shuffle, batches come bucket by bucket in index order. drop_last drops each bucket's short final batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    lengths = np.asarray(lengths)
    bucket = _bucket_index(lengths, bucket_frames)
    rng = np.random.default_rng([seed, epoch])
    plan: list[np.ndarray] = []
    for b in range(len(bucket_frames)):
        members = np.flatnonzero(bucket == b)
        if shuffle:
            members = rng.permutation(members)
        for start in range(0, members.size, batch_size):
            chunk = members[start : start + batch_size]
            if chunk.size == batch_size or not drop_last:
                plan.append(chunk)
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def batches(
    examples: Sequence[Example],
    batch_size: int,
    bucket_frames: Sequence[int],
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    right_pad_frames: int = 0,
    target_multiple: int = 8,
    pad_value: float = 0.0,
    target_pad_id: int = 0,
    start: int = 0,
    rows: slice | None = None,
) -> Iterator[Batch]:
    """Padded batches of one epoch (see ``plan_batches`` for the order), from batch number ``start`` on.

    Shapes: features (B, bucket + right_pad_frames, F) and targets (B, U_bucket), where U_bucket is the
    longest target among all examples of that bucket rounded up to target_multiple; so there is exactly one
    shape per bucket and a jitted step compiles len(bucket_frames) times at most. A short final batch
    (drop_last=False) is filled to batch_size with copies of its first example marked valid=False.

    right_pad_frames: frames of pad_value after each row's valid frames and beyond the bucket (the right
        context R of the last segment, in input frames: R * time_reduction_stride for an Emformer RNN-T).
        streamformer's Emformer takes the features as (B, T + R, D) with lengths = valid frames (after time
        reduction: feature_lengths // stride); torchaudio's counts the right context in its lengths.
    rows: build only these rows of every batch (a process's share of the global batch, with several hosts):
        the Batch then has rows.stop - rows.start rows, and only their examples are read.
    """
    if right_pad_frames < 0:
        raise ValueError(f"right_pad_frames: expected >= 0, got {right_pad_frames}")
    if target_multiple < 1:
        raise ValueError(f"target_multiple: expected >= 1, got {target_multiple}")
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    lengths = np.array([e.features.shape[0] for e in examples])
    dims = {e.features.shape[1] for e in examples}
    if len(dims) != 1:
        raise ValueError(f"examples: expected one feature size F, got {sorted(dims)}")
    (num_features,) = dims
    bucket = _bucket_index(lengths, bucket_frames)
    target_lengths = np.array([e.targets.size for e in examples])
    bucket_targets = np.zeros(len(bucket_frames), dtype=int)
    np.maximum.at(bucket_targets, bucket, target_lengths)
    bucket_targets = [_round_up(max(u, 1), target_multiple) for u in bucket_targets]

    plan = plan_batches(
        lengths, batch_size, bucket_frames, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last
    )
    share = rows if rows is not None else slice(0, batch_size)
    for indices in plan[start:]:
        b = int(bucket[indices[0]])
        all_rows = list(indices) + [indices[0]] * (batch_size - len(indices))
        all_ids = tuple(examples[i].id for i in indices) + ("",) * (batch_size - len(indices))
        rows_here = all_rows[share]
        features = np.full(
            (len(rows_here), bucket_frames[b] + right_pad_frames, num_features), pad_value, np.float32
        )
        targets = np.full((len(rows_here), bucket_targets[b]), target_pad_id, np.int32)
        for r, i in enumerate(rows_here):
            example = examples[i]
            features[r, : lengths[i]] = example.features
            targets[r, : target_lengths[i]] = example.targets
        yield Batch(
            features=features,
            feature_lengths=lengths[rows_here].astype(np.int32),
            targets=targets,
            target_lengths=target_lengths[rows_here].astype(np.int32),
            valid=(np.arange(batch_size) < len(indices))[share],
            ids=all_ids[share],
        )


# ----------------------------------------------------------------------------------------------------
# SpecAugment.


def spec_augment(
    rng: jax.Array,
    features: jax.Array,
    lengths: jax.Array,
    *,
    num_freq_masks: int = 2,
    freq_mask_width: int = 27,
    num_time_masks: int = 2,
    time_mask_width: int = 40,
    max_time_mask_fraction: float = 1.0,
    mask_value: float = 0.0,
) -> jax.Array:
    """SpecAugment's frequency and time masking of valid frames (jit-able; counts and widths are static).

    Each frequency mask sets a band of w ~ U{0..freq_mask_width} channels to mask_value over the valid frames;
    each time mask sets w ~ U{0..min(time_mask_width, max_time_mask_fraction * length)} valid frames (as
    torchaudio's TimeMasking with p). Frames at and after lengths[b] (padding, right context) are untouched.

    Args:
        rng: a PRNG key.
        features: (B, T, F).
        lengths: (B,) valid frames per row.
    Returns:
        (B, T, F), the masked features.
    """
    if features.ndim != 3:
        raise ValueError(f"features: expected shape (B, T, F), got {features.shape}")
    batch, time, channels = features.shape
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {lengths.shape}")
    for name, value in (
        ("num_freq_masks", num_freq_masks),
        ("freq_mask_width", freq_mask_width),
        ("num_time_masks", num_time_masks),
        ("time_mask_width", time_mask_width),
    ):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if not 0.0 <= max_time_mask_fraction <= 1.0:
        raise ValueError(f"max_time_mask_fraction: expected in [0, 1], got {max_time_mask_fraction}")
    freq_width_key, freq_start_key, time_width_key, time_start_key = jax.random.split(rng, 4)
    lengths = lengths.astype(jnp.int32)

    def spans(width_key, start_key, count, max_width, extent):
        # extent: (B, 1) room for the masks; widths ~ U{0..max_width}, starts ~ U{0..extent - width}.
        width = jnp.floor(jax.random.uniform(width_key, (batch, count)) * (max_width + 1)).astype(jnp.int32)
        width = jnp.minimum(width, extent)
        begin = jnp.floor(jax.random.uniform(start_key, (batch, count)) * (extent - width + 1)).astype(
            jnp.int32
        )
        return begin, begin + width

    channel = jnp.arange(channels)
    f_begin, f_end = spans(
        freq_width_key, freq_start_key, num_freq_masks, freq_mask_width, jnp.full((batch, 1), channels)
    )
    freq_mask = jnp.any(
        (channel[None, None] >= f_begin[..., None]) & (channel[None, None] < f_end[..., None]), axis=1
    )

    frame = jnp.arange(time)
    max_time = jnp.minimum(time_mask_width, jnp.floor(max_time_mask_fraction * lengths).astype(jnp.int32))[
        :, None
    ]
    t_begin, t_end = spans(time_width_key, time_start_key, num_time_masks, max_time, lengths[:, None])
    time_mask = jnp.any(
        (frame[None, None] >= t_begin[..., None]) & (frame[None, None] < t_end[..., None]), axis=1
    )

    valid = frame[None, :] < lengths[:, None]
    masked = (freq_mask[:, None, :] | time_mask[:, :, None]) & valid[:, :, None]
    return jnp.where(masked, jnp.asarray(mask_value, features.dtype), features)


# ----------------------------------------------------------------------------------------------------
# espeak-ng.

_ESPEAK_MISSING = (
    "espeak-ng was not found on PATH: install it (e.g. 'apt-get install espeak-ng') to build a real-speech "
    "dataset, or use the embedded synthetic dataset (train.synth), which needs no download and no system tool"
)


def build_espeak_librispeech(
    root: str | os.PathLike,
    sentences: Sequence[str],
    *,
    voices: Sequence[str] = ("en-us", "en", "en-gb-x-rp"),
    words_per_minute: tuple[int, int] = (140, 190),
    pitch: tuple[int, int] = (30, 70),
    seed: int = 0,
    sample_rate: int = 16000,
    audio_format: str = "flac",
    overwrite: bool = False,
) -> Path:
    """Speak ``sentences`` with espeak-ng into a LibriSpeech-layout tree under ``root``; returns ``root``.

    Sentence i gets voice voices[i % len(voices)] (its speaker folder is that voice's number + 1) and a random
    speed and pitch from a generator seeded by ``seed``. espeak-ng writes 22.05 kHz audio, resampled to
    ``sample_rate``. Raises EspeakNotFoundError, saying what to do instead, when espeak-ng is not installed.
    """
    executable = shutil.which("espeak-ng")
    if executable is None:
        raise EspeakNotFoundError(_ESPEAK_MISSING)
    if not sentences:
        raise ValueError("sentences: expected at least one sentence, got none")
    rng = np.random.default_rng(seed)
    utterances = []
    with tempfile.TemporaryDirectory() as scratch:
        for i, sentence in enumerate(sentences):
            voice = i % len(voices)
            wav = Path(scratch) / f"{i}.wav"
            command = [
                executable,
                "-v", voices[voice],
                "-s", str(int(rng.integers(words_per_minute[0], words_per_minute[1] + 1))),
                "-p", str(int(rng.integers(pitch[0], pitch[1] + 1))),
                "-w", str(wav),
                sentence,
            ]  # fmt: skip
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0 or not wav.is_file():
                raise RuntimeError(
                    f"espeak-ng failed on sentence {i} ({sentence!r}): {result.stderr.strip()}"
                )
            audio = load_audio(wav, sample_rate)
            utterances.append(Utterance(audio=audio, text=sentence, id=f"{voice + 1}-0-{i:04d}"))
    return write_librispeech(
        utterances, root, sample_rate=sample_rate, audio_format=audio_format, overwrite=overwrite
    )
