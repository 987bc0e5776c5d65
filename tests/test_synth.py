"""The embedded synthetic dataset: determinism, variability (a real transduction task), speed, and the
LibriSpeech-layout writer."""

import json
import re
import time

import numpy as np
import pytest
import soundfile

from streamformer.train.corpora.synth import (
    ALPHABET,
    VOCABULARY,
    SynthConfig,
    SynthDataset,
    config_dict,
    generate_split,
    synthesize,
    write_librispeech,
    write_split,
)

CONFIG = SynthConfig(seed=3)


@pytest.fixture(scope="module")
def train_utterances():
    return generate_split(CONFIG, "train", 120)


def test_deterministic_per_seed_split_and_index(train_utterances):
    again = synthesize(CONFIG, "train", 7)
    assert again.text == train_utterances[7].text
    np.testing.assert_array_equal(again.audio, train_utterances[7].audio)
    assert not np.array_equal(synthesize(CONFIG, "test", 7).audio[:1000], again.audio[:1000])
    assert not np.array_equal(synthesize(SynthConfig(seed=4), "train", 7).audio[:1000], again.audio[:1000])
    dataset = SynthDataset(CONFIG, "train", 120)
    assert len(dataset) == 120
    np.testing.assert_array_equal(dataset[-1].audio, train_utterances[-1].audio)
    with pytest.raises(IndexError, match="index"):
        dataset[120]


def test_utterances_are_well_formed(train_utterances):
    durations = []
    for utt in train_utterances:
        assert utt.audio.dtype == np.float32 and utt.audio.ndim == 1
        assert np.all(np.isfinite(utt.audio)) and np.max(np.abs(utt.audio)) <= 1.0
        assert np.max(np.abs(utt.audio)) > 1e-3
        words = utt.text.split(" ")
        assert 1 <= len(words) <= 4 and all(w in VOCABULARY for w in words)
        assert re.fullmatch(r"1-\d+-\d{4}", utt.id)
        durations.append(utt.audio.size / CONFIG.sample_rate)
    assert 0.25 < min(durations) and max(durations) < 3.2
    assert 1.0 < np.mean(durations) < 1.8
    assert len({u.id for u in train_utterances}) == len(train_utterances)
    assert set("".join(VOCABULARY)) == set(ALPHABET)


def test_same_text_varies_in_duration_and_sound():
    """No lookup: one word comes with different durations, speakers and noise each time."""
    config = SynthConfig(seed=0, vocabulary=("rose",), words_per_utterance=(1, 1), edge_ms=(50.0, 50.0))
    lengths = [synthesize(config, "train", i).audio.size for i in range(12)]
    assert len(set(lengths)) == 12
    assert max(lengths) - min(lengths) > 0.1 * 16000


def test_pauses_separate_words_and_noise_fills_silence():
    config = SynthConfig(seed=1, words_per_utterance=(2, 2), pause_ms=(150.0, 150.0), snr_db=(20.0, 20.0))
    utt = synthesize(config, "train", 0)
    frames = utt.audio[: utt.audio.size // 160 * 160].reshape(-1, 160)
    energy_db = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    # Edges hold noise only: clearly quieter than the loudest speech frames, but not digital silence.
    assert energy_db[:3].max() < energy_db.max() - 15
    assert np.std(utt.audio[:480]) > 1e-5


def test_config_and_split_validation():
    with pytest.raises(ValueError, match="vocabulary"):
        SynthConfig(vocabulary=("xyz",))
    with pytest.raises(ValueError, match="words_per_utterance"):
        SynthConfig(words_per_utterance=(0, 2))
    with pytest.raises(ValueError, match="split"):
        synthesize(CONFIG, "validation", 0)
    logged = json.loads(json.dumps(config_dict(CONFIG)))
    assert logged["seed"] == 3 and tuple(logged["vocabulary"]) == VOCABULARY


def test_generation_is_fast():
    begin = time.perf_counter()
    utterances = generate_split(CONFIG, "dev", 200)
    elapsed = time.perf_counter() - begin
    audio_seconds = sum(u.audio.size for u in utterances) / 16000
    # About 4 ms per utterance on one free core; allow for a busy machine.
    assert elapsed < 10.0, f"200 utterances took {elapsed:.1f} s"
    assert audio_seconds / elapsed > 20


@pytest.mark.parametrize("audio_format", ["flac", "wav"])
def test_write_librispeech_layout_and_atomic_replace(tmp_path, audio_format):
    utterances = generate_split(CONFIG, "test", 4)
    root = write_librispeech(utterances, tmp_path / "test-synth", audio_format=audio_format)
    assert root == tmp_path / "test-synth"
    transcript = root / "3" / "0" / "3-0.trans.txt"
    lines = transcript.read_text().splitlines()
    assert lines == [f"{u.id} {u.text}" for u in utterances]
    for utt in utterances:
        audio, rate = soundfile.read(root / "3" / "0" / f"{utt.id}.{audio_format}", dtype="float32")
        assert rate == 16000
        np.testing.assert_allclose(audio, utt.audio, atol=1.0 / 32768 + 1e-7)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_librispeech(utterances, root, audio_format=audio_format)
    write_split(CONFIG, "dev", 2, root, audio_format=audio_format, overwrite=True)
    assert sorted(p.name for p in root.iterdir()) == ["2"]
    assert [p.name for p in tmp_path.iterdir()] == ["test-synth"]  # no staging folders left behind
    with pytest.raises(ValueError, match="audio_format"):
        write_librispeech(utterances, tmp_path / "x", audio_format="mp3")
