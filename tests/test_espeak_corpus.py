"""The espeak-ng corpus (train/corpora/espeak.py): pip-only build, determinism, disjoint splits, unseen speakers,
LibriSpeech layout read by the project's reader, word alignments."""

import json
import re

import numpy as np
import pytest
import soundfile

from streamformer.train.corpora import audio as data_lib
from streamformer.train.corpora.espeak import (
    UNSEEN_VARIANTS,
    EspeakCorpusConfig,
    build_corpus,
    plan_utterances,
)
from streamformer.train.corpora.espeak_engine import EspeakEngine
from streamformer.train.corpora.sentences import load_sentences, normalize_sentence, recombine_sentences

SMALL = EspeakCorpusConfig(seed=5, max_sentences=40, train_renditions=1, train_recombined=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("espeak") / "corpus", SMALL, workers=2)


def _transcripts(folder):
    return {e.id: e.text for e in data_lib.list_librispeech(folder)}


def test_sentences_are_real_normalised_english():
    sentences = load_sentences()
    vocabulary = {w for s in sentences for w in s.split()}
    assert len(sentences) > 3000 and len(vocabulary) > 3000
    assert all(re.fullmatch(r"[a-z']+( [a-z']+){3,13}", s) for s in sentences)
    assert normalize_sentence("Don't PANIC -- it's only a test!") == "don't panic it's only a test"
    assert normalize_sentence("Call 555-1234 now") is None


def test_engine_speaks_from_the_wheel():
    engine = EspeakEngine(fresh=True)
    try:
        audio, words = engine.speak("hello world from espeak", "en-us+m3", rate=160, pitch=40)
        with pytest.raises(ValueError, match="voice"):
            engine.speak("hello", "no-such-voice")
    finally:
        engine.close()
    assert engine.sample_rate == 22050 and audio.dtype == np.int16
    assert 0.8 < audio.size / 22050 < 3.0 and np.abs(audio).max() > 1000
    assert [position for position, _ in words] == [1, 7, 13, 18]


def test_same_seed_same_audio_whatever_the_workers(corpus, tmp_path):
    again = build_corpus(tmp_path / "again", SMALL, workers=1)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*.flac"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.flac")) and len(files) > 30
    for name in files:
        np.testing.assert_array_equal(soundfile.read(corpus / name)[0], soundfile.read(again / name)[0])
    assert build_corpus(corpus, SMALL) == corpus  # same config: kept as it is
    with pytest.raises(FileExistsError, match="overwrite"):
        build_corpus(corpus, EspeakCorpusConfig(seed=6, max_sentences=40))


def test_splits_share_no_sentence_and_unseen_speakers_stay_out_of_training(corpus):
    texts = {split: _transcripts(corpus / split) for split in ("train", "dev", "test")}
    sentences = {split: set(t.values()) for split, t in texts.items()}
    assert all(sentences.values())
    assert not sentences["train"] & sentences["dev"]
    assert not sentences["train"] & sentences["test"] and not sentences["dev"] & sentences["test"]

    speakers = json.loads((corpus / "speakers.json").read_text())
    unseen = {int(k) for k, v in speakers.items() if v["unseen"]}
    assert all(v["voice"].split("+")[-1] in UNSEEN_VARIANTS for k, v in speakers.items() if v["unseen"])
    speaker_of = {split: {int(i.split("-")[0]) for i in t} for split, t in texts.items()}
    assert not speaker_of["train"] & unseen and not speaker_of["dev"] & unseen
    seen_half = data_lib.read_manifest(corpus / "test-seen.jsonl")
    unseen_half = data_lib.read_manifest(corpus / "test-unseen.jsonl")
    assert {int(e.id.split("-")[0]) for e in unseen_half} <= unseen
    assert {int(e.id.split("-")[0]) for e in seen_half} <= speaker_of["train"] | speaker_of["dev"] | set(
        range(1, len(speakers) + 1)
    ) - unseen
    # Each test sentence is read once by a seen and once by an unseen speaker.
    assert sorted(e.text for e in seen_half) == sorted(e.text for e in unseen_half)
    assert len(seen_half) + len(unseen_half) == len(texts["test"])


def test_recombined_text_is_new_word_sequences_of_training_phrases():
    sources = load_sentences()[:300]
    held_out = load_sentences()[300:400]
    out = recombine_sentences(sources, 500, seed=3, min_words=4, max_words=14, exclude=held_out)
    assert out == recombine_sentences(sources, 500, seed=3, exclude=held_out)  # deterministic by seed
    assert out != recombine_sentences(sources, 500, seed=4, exclude=held_out)
    assert len(set(out)) == 500 and not set(out) & (set(sources) | set(held_out))
    vocabulary = {w for s in sources for w in s.split()}
    assert all(4 <= len(s.split()) <= 14 and set(s.split()) <= vocabulary for s in out)
    bigrams = {b for s in sources for b in zip(s.split(), s.split()[1:])}
    pairs = [b for s in out for b in zip(s.split(), s.split()[1:])]
    assert 0.5 < sum(b in bigrams for b in pairs) / len(pairs) < 1.0  # spans of real phrases, joined anew
    with pytest.raises(ValueError, match="count"):
        recombine_sentences(["one two"], 2, seed=0, min_words=4, max_words=4)  # only "one two one two"
    with pytest.raises(ValueError, match="train_recombined"):
        EspeakCorpusConfig(train_recombined=-1)


def test_full_plan_keeps_the_split_rules():
    """The full-size corpus (planned, not synthesised): disjoint splits, no unseen voice in train or dev."""
    specs = plan_utterances(EspeakCorpusConfig())
    by_split = {s: {x.text for x in specs if x.split == s} for s in ("train", "dev", "test")}
    assert len(by_split["train"]) > 3000 and len(by_split["test"]) == 200 and len(by_split["dev"]) == 150
    assert not (by_split["train"] & by_split["dev"] or by_split["train"] & by_split["test"])
    assert not by_split["dev"] & by_split["test"]
    training_voices = {x.voice for x in specs if x.split != "test"}
    assert not {v for v in training_voices if v.split("+")[-1] in UNSEEN_VARIANTS}
    assert len(training_voices) > 80
    assert {x.voice for x in specs if x.unseen} and all(x.split == "test" for x in specs if x.unseen)
    assert len({x.id for x in specs}) == len(specs)
    recombined = [x for x in specs if x.id.split("-")[1] == "4"]
    assert len(recombined) == 3 * len(by_split["train"] - {x.text for x in recombined})
    assert all(x.split == "train" and not x.unseen for x in recombined)


def test_audio_metadata_and_alignments(corpus):
    summary = json.loads((corpus / "corpus.json").read_text())
    entries = data_lib.list_librispeech(corpus / "train")
    assert summary["splits"]["train"]["utterances"] == len(entries)
    recombined = [e for e in entries if e.id.split("-")[1] == "4"]  # one per training sentence in SMALL
    assert summary["splits"]["train"]["recombined"] == len(recombined) == len(entries) // 2 > 10
    alignments = json.loads((corpus / "train.alignments.json").read_text())
    levels = []
    for entry in entries:
        audio, rate = soundfile.read(entry.path, dtype="float32")
        assert rate == 16000 and audio.ndim == 1 and np.isfinite(audio).all()
        levels.append(20 * np.log10(np.sqrt(np.mean(audio**2))))
        words = alignments[entry.id]
        assert [w for w, _, _ in words] == entry.text.split()
        times = np.array([[a, b] for _, a, b in words])
        assert np.all(times[:, 1] >= times[:, 0]) and np.all(np.diff(times[:, 0]) >= 0)
        assert times[-1, 1] <= audio.size / rate + 1e-3
    assert max(levels) - min(levels) > 5  # random gain
