"""From a DataConfig to examples: corpora, tokenizer, global feature statistics, features.

A run's workdir keeps what the model depends on besides its weights: tokenizer.model and global_stats.json,
made from the training split on the first run and reused afterwards (and by eval and transcribe).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamformer.features import GlobalStats, compute_global_stats, frame_lengths, log_mel_spectrogram
from streamformer.io import atomic_write_bytes
from streamformer.text import Tokenizer, train_bpe

from ..config import Config, DataConfig
from . import audio, screen, synth

__all__ = [
    "Example",
    "shard_folder",
    "prepare_examples",
    "check_finite",
    "load_corpus",
    "log_mel_features",
    "tokenizer_for",
    "global_stats_for",
    "make_examples",
    "normalize",
    "normalize_text",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One featurized, tokenized utterance: features (T, F) float32 and targets (U,) int32."""

    id: str
    text: str
    features: np.ndarray
    targets: np.ndarray


def prepare_examples(
    items: Iterable[audio.AudioEntry | synth.Utterance],
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
        features = np.asarray(featurize(audio.audio_of(item, sample_rate)), dtype=np.float32)
        if features.ndim != 2 or features.shape[0] == 0:
            raise ValueError(
                f"featurize: expected (T, F) features with T >= 1 for {item.id}, got {features.shape}"
            )
        targets = np.asarray(encode(item.text), dtype=np.int32).reshape(-1)
        examples.append(Example(id=item.id, text=item.text, features=features, targets=targets))
    return examples


def normalize_text(text: str) -> str:
    """Transcripts are lowercased, as torchaudio's LibriSpeech recipe does."""
    return " ".join(text.lower().split())


def load_corpus(data: DataConfig, split: str) -> list:
    """The utterances of ``split``: synth.Utterance (in memory) for "synth", else audio.AudioEntry."""
    spec = getattr(data, split)
    if spec == "synth":
        return _synthesize(
            synth.SynthConfig(seed=data.synth_seed), split, data.synth_sizes[SPLITS.index(split)]
        )
    path = Path(spec)
    if path.is_dir():
        return audio.list_librispeech(path)
    if path.is_file():
        return audio.read_manifest(path)
    raise FileNotFoundError(
        f"data.{split}: expected 'synth', a LibriSpeech folder or a JSON-lines manifest, "
        f"got {spec!r} (no such file or folder)"
    )


def _synthesize_range(config: synth.SynthConfig, split: str, begin: int, end: int) -> list:
    return [synth.synthesize(config, split, i) for i in range(begin, end)]


def _synthesize(config: synth.SynthConfig, split: str, size: int) -> list:
    """synth.generate_split on every core (the numpy synthesis is single-threaded); the same result."""
    workers = min(os.cpu_count() or 1, max(size // 200, 1))
    if workers == 1:
        return _synthesize_range(config, split, 0, size)
    bounds = np.linspace(0, size, 4 * workers + 1).astype(int)
    # spawn, not fork: the parent may already run JAX's threads. A script without an `if __name__ ==
    # "__main__"` guard cannot spawn workers: then synthesize here.
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            ranges = list(zip(bounds[:-1], bounds[1:], strict=True))
            parts = pool.map(
                _synthesize_range, [config] * len(ranges), [split] * len(ranges), *zip(*ranges, strict=True)
            )
            return [utterance for part in parts for utterance in part]
    except BrokenProcessPool:
        logger.warning("synthesis workers failed to start; synthesizing in this process")
        return _synthesize_range(config, split, 0, size)


def log_mel_features(
    audios: list[np.ndarray], batch_size: int = 64, pad_multiple: int = 8000
) -> list[np.ndarray]:
    """Unnormalized log-mel features (T, 80) of each waveform, in padded batches (few compiled shapes)."""
    if not audios:
        return []
    order = np.argsort([a.size for a in audios])
    out: list[np.ndarray | None] = [None] * len(audios)
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        width = -(-max(audios[i].size for i in rows) // pad_multiple) * pad_multiple
        waves = np.zeros((batch_size, width), np.float32)
        lengths = np.full(batch_size, width, np.int32)
        for r, i in enumerate(rows):
            waves[r, : audios[i].size] = audios[i]
            lengths[r] = audios[i].size
        features = np.asarray(log_mel_spectrogram(waves, lengths))
        frames = np.asarray(frame_lengths(lengths))
        for r, i in enumerate(rows):
            out[i] = features[r, : frames[r]]
    return out  # type: ignore[return-value]


#: Utterances whose audio is in memory at once while a split is featurised (then only features are kept).
FEATURE_CHUNK = 2048


def _usable_features(items: list, report: screen.DataReport) -> tuple[list, list[np.ndarray]]:
    """(the items whose audio is usable, their unnormalised log-mel features), the audio read and featurised
    FEATURE_CHUNK utterances at a time, so a split's memory is its features (about 1/50 of its float32 audio:
    80 values per 160 samples), not its waveforms: 100 h of LibriSpeech would otherwise hold 23 GB of audio."""
    kept, features = [], []
    for begin in range(0, len(items), FEATURE_CHUNK):
        usable, audios = screen.load_audios(items[begin : begin + FEATURE_CHUNK], audio.audio_of, report)
        kept += usable
        features += log_mel_features(audios)
    return kept, features


def shard_folder(data: DataConfig, split: str) -> Path | None:
    """The shard folder ``data.<split>`` names (``python -m train prepare``'s output), or None."""
    from . import shards

    spec = getattr(data, split)
    return Path(spec) if spec != "synth" and shards.is_shard_folder(spec) else None


def _from_shards(config: Config, workdir: Path, name: str) -> bool:
    """Copies the training shard folder's ``name`` (tokenizer.model, global_stats.json) into the workdir when
    the run trains from one; True if it did. A shard folder's targets were encoded with its tokenizer, so
    data.tokenizer and data.vocab_size must not say otherwise."""
    from . import shards

    folder = shard_folder(config.data, "train")
    if folder is None:
        return False
    index = shards.load_index(folder)
    if config.data.tokenizer or config.data.global_stats:
        raise ValueError(
            f"data.tokenizer / data.global_stats: a shard folder carries its own ({folder}); leave them empty, "
            f"got {config.data.tokenizer!r} / {config.data.global_stats!r}"
        )
    if index["vocab_size"] != config.data.vocab_size:
        raise ValueError(
            f"data.vocab_size: the shards in {folder} were prepared with {index['vocab_size']} pieces, got "
            f"{config.data.vocab_size}"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    # Several processes of one run may copy at once: each writes its own temporary file.
    atomic_write_bytes(workdir / index[name], (folder / index[name]).read_bytes())
    return True


def tokenizer_for(config: Config, workdir: Path, train_texts: list[str] | None) -> Tokenizer:
    """data.tokenizer if set, else <workdir>/tokenizer.model: trained on ``train_texts`` when absent (the
    training shard folder's, when the run trains from one)."""
    if config.data.tokenizer:
        return Tokenizer(config.data.tokenizer)
    path = workdir / "tokenizer.model"
    if not path.exists() and not _from_shards(config, workdir, "tokenizer"):
        if train_texts is None:
            raise FileNotFoundError(f"tokenizer: {path} does not exist (train first, or set data.tokenizer)")
        train_bpe(train_texts, path, config.data.vocab_size)
    return Tokenizer(path)


def global_stats_for(config: Config, workdir: Path, train_features: list | None) -> GlobalStats:
    """data.global_stats if set, else <workdir>/global_stats.json, computed from ``train_features``."""
    if config.data.global_stats:
        return GlobalStats.load(config.data.global_stats)
    path = workdir / "global_stats.json"
    if not path.exists() and not _from_shards(config, workdir, "global_stats"):
        if train_features is None:
            raise FileNotFoundError(
                f"global stats: {path} does not exist (train first, or set data.global_stats)"
            )
        compute_global_stats(train_features).save(path)
    return GlobalStats.load(path)


def normalize(features: np.ndarray, stats: GlobalStats) -> np.ndarray:
    return ((features - np.asarray(stats.mean)) * np.asarray(stats.invstddev)).astype(np.float32)


def make_examples(
    items: list, features: list[np.ndarray], stats: GlobalStats, tokenizer: Tokenizer
) -> list[Example]:
    examples = []
    for item, feats in zip(items, features, strict=True):
        text = normalize_text(item.text)
        examples.append(
            Example(
                id=item.id,
                text=text,
                features=normalize(feats, stats),
                targets=np.asarray(tokenizer.encode(text), np.int32),
            )
        )
    return examples


def prepare_split(
    config: Config,
    workdir: Path,
    split: str,
    tokenizer: Tokenizer | None = None,
    stats: GlobalStats | None = None,
    reports: dict | None = None,
) -> tuple[list[Example], Tokenizer, GlobalStats]:
    """Examples of ``split``; for "train" the tokenizer and stats are made when the workdir has none.

    Unusable utterances (undecodable, empty or silent audio; a transcript the tokenizer cannot encode) are
    skipped and logged, or raise screen.BadDataError with data.strict; ``reports[split]`` receives the
    screen.DataReport when ``reports`` is given.
    """
    folder = shard_folder(config.data, split)
    if folder is not None:  # featurised already: read it whole (dev and test; training streams its shards)
        from . import shards

        tokenizer = tokenizer or tokenizer_for(config, workdir, None)
        stats = stats or global_stats_for(config, workdir, None)
        return shards.read_split(folder, split, stats), tokenizer, stats
    items = load_corpus(config.data, split)
    if not items:
        raise ValueError(f"data.{split}: no utterances in {getattr(config.data, split)!r}")
    report = screen.DataReport(split, len(items))
    items, features = _usable_features(items, report)
    texts = [normalize_text(item.text) for item in items]
    tokenizer = tokenizer or tokenizer_for(config, workdir, texts if split == "train" else None)
    items, features = screen.encodable(items, features, lambda t: tokenizer.encode(normalize_text(t)), report)
    screen.finish(report, config.data.strict)
    if reports is not None:
        reports[split] = report
    if not items:
        raise ValueError(f"data.{split}: none of the {report.total} utterances is usable (see the log)")
    stats = stats or global_stats_for(config, workdir, features if split == "train" else None)
    return make_examples(items, features, stats, tokenizer), tokenizer, stats


def check_fits(config: Config, tokenizer: Tokenizer, stats: GlobalStats) -> int:
    """Raises a clear ValueError when the model cannot take this data; returns num_symbols."""
    model = config.model
    num_symbols = model.num_symbols or tokenizer.num_symbols
    if num_symbols < tokenizer.num_symbols:
        raise ValueError(
            f"model.num_symbols: expected at least the tokenizer's vocabulary + 1 (blank) = "
            f"{tokenizer.num_symbols}, got {num_symbols}"
        )
    if stats.num_features != model.input_dim:
        raise ValueError(
            f"model.input_dim: expected the features' dimension {stats.num_features}, got {model.input_dim}"
        )
    return num_symbols


def check_finite(examples: list[Example], split: str) -> None:
    bad = [e.id for e in examples if not np.isfinite(e.features).all()]
    if bad:
        logger.warning(
            "%s: %d utterance(s) have NaN/Inf features (their steps will be skipped): %s",
            split,
            len(bad),
            bad[:5],
        )
