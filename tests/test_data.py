"""Readers (LibriSpeech layout, JSON-lines manifests), audio loading, bucketed batching and SpecAugment, on
small synthetic trees written to temporary folders."""

import dataclasses
import itertools
import json
import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from streamformer.train.config import preset
from streamformer.train.corpora.audio import list_librispeech, load_audio, read_manifest, resample
from streamformer.train.corpora.prepare import prepare_examples
from streamformer.train.corpora.synth import ALPHABET, SynthConfig, generate_split, write_librispeech
from streamformer.train.loop.batches import batches, make_buckets, plan_batches, spec_augment
from streamformer.train.loop.loader import bucket_frames_for

CONFIG = SynthConfig(seed=11)


def featurize(waveform: np.ndarray) -> np.ndarray:
    """A numpy stand-in for the log-mel front end: 10 ms frames, log energy in 8 linear bands."""
    frames = waveform[: waveform.size // 160 * 160].reshape(-1, 160)
    power = np.abs(np.fft.rfft(frames, axis=-1)[:, :80]) ** 2
    return np.log(power.reshape(-1, 8, 10).sum(-1) + 1e-6).astype(np.float32)


def encode(text: str) -> list[int]:
    symbols = " " + "".join(ALPHABET)
    return [symbols.index(c) for c in text]


@pytest.fixture(scope="module")
def utterances():
    return generate_split(CONFIG, "train", 6)


@pytest.fixture(scope="module")
def tree(tmp_path_factory, utterances):
    return write_librispeech(utterances, tmp_path_factory.mktemp("corpus") / "train-synth")


@pytest.fixture(scope="module")
def examples():
    return prepare_examples(generate_split(CONFIG, "dev", 60), featurize, encode)


# ----------------------------------------------------------------------------------------------------
# Readers and audio.


def test_list_librispeech_reads_back_the_tree(tree, utterances):
    entries = list_librispeech(tree)
    assert [e.id for e in entries] == sorted(u.id for u in utterances)
    by_id = {u.id: u for u in utterances}
    for entry in entries:
        assert entry.path.suffix == ".flac" and entry.text == by_id[entry.id].text
        audio = load_audio(entry.path)
        np.testing.assert_allclose(audio, by_id[entry.id].audio, atol=1.0 / 32768 + 1e-7)


def test_list_librispeech_follows_links_to_several_folders(tmp_path, utterances):
    """LibriSpeech's 960 h are three folders: a folder of links to them lists all three."""
    first = write_librispeech(utterances[:2], tmp_path / "train-clean-100", audio_format="wav")
    second = write_librispeech(utterances[2:5], tmp_path / "train-clean-360", audio_format="wav")
    (tmp_path / "train-960").mkdir()
    for part in (first, second):
        (tmp_path / "train-960" / part.name).symlink_to(part)
    listed = list_librispeech(tmp_path / "train-960")
    assert [e.id for e in listed] == sorted(u.id for u in utterances[:5])


def test_list_librispeech_errors(tmp_path, utterances):
    root = write_librispeech(utterances[:3], tmp_path / "c", audio_format="wav")
    assert [e.path.suffix for e in list_librispeech(root)] == [".wav"] * 3
    transcript = next(root.rglob("*.trans.txt"))
    (transcript.parent / f"{utterances[1].id}.wav").unlink()
    with pytest.raises(FileNotFoundError, match=f"(?s)1 audio file.*{utterances[1].id}.{{flac,wav}}"):
        list_librispeech(root)
    transcript.write_text(f"{utterances[0].id}\n")
    with pytest.raises(ValueError, match=r"trans.txt:1: expected '<id> <text>'"):
        list_librispeech(root)


def test_list_librispeech_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no '<speaker>-<chapter>.trans.txt'"):
        list_librispeech(tmp_path / "empty")


def test_read_manifest(tmp_path, tree, utterances):
    entries = list_librispeech(tree)
    lines = [
        {"audio": str(entries[0].path.relative_to(tree.parent)), "text": entries[0].text, "duration": 1.0},
        {"audio_filepath": str(entries[1].path), "text": entries[1].text},  # absolute, NeMo's key
        {"audio": str(entries[2].path), "text": entries[2].text, "id": "custom"},
    ]
    manifest = tree.parent / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    read = read_manifest(manifest)
    assert [e.path.resolve() for e in read] == [e.path.resolve() for e in entries[:3]]
    assert [e.text for e in read] == [e.text for e in entries[:3]]
    assert [e.id for e in read] == [entries[0].id, entries[1].id, "custom"]

    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        json.dumps({"audio": "gone1.flac", "text": "a"})
        + "\n"
        + json.dumps(lines[1])
        + "\n"
        + json.dumps({"audio": "gone2.wav", "text": "b"})
        + "\n"
    )
    with pytest.raises(
        FileNotFoundError, match=r"2 audio file\(s\) missing:(.|\n)*gone1.flac(.|\n)*gone2.wav"
    ):
        read_manifest(broken)
    broken.write_text(json.dumps(lines[1]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"broken.jsonl:2: not valid JSON"):
        read_manifest(broken)
    broken.write_text(json.dumps({"path": "x.wav", "text": "a"}) + "\n")
    with pytest.raises(ValueError, match=r":1: expected string keys 'audio'"):
        read_manifest(broken)


def test_load_audio_resamples_and_downmixes(tmp_path, caplog):
    t = np.arange(22050) / 22050
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    path = tmp_path / "tone.wav"
    soundfile.write(path, stereo, 22050, subtype="FLOAT")
    with caplog.at_level(logging.INFO, logger="streamformer.train.corpora.audio"):
        audio = load_audio(path, 16000)
    assert "resampling" in caplog.text and "22050 Hz to 16000 Hz" in caplog.text
    assert audio.shape == (16000,) and audio.dtype == np.float32
    expected = 0.375 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)  # mean of the two channels
    np.testing.assert_allclose(audio[200:-200], expected[200:-200], atol=2e-3)
    with pytest.raises(ValueError, match=r"tone.wav: expected sample rate 16000 Hz, got 22050 Hz"):
        load_audio(path, 16000, resample_audio=False)


def test_load_audio_rejects_empty_silent_and_garbage(tmp_path):
    silent = tmp_path / "silent.flac"
    soundfile.write(silent, np.zeros(1600), 16000)
    with pytest.raises(ValueError, match=r"silent.flac: silent audio"):
        load_audio(silent)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0), 16000)
    with pytest.raises(ValueError, match=r"empty.wav: empty audio file"):
        load_audio(empty)
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"not audio at all")
    with pytest.raises(ValueError, match=r"garbage.flac: cannot decode audio"):
        load_audio(garbage)


@pytest.mark.parametrize("source_rate, target_rate", [(8000, 16000), (44100, 16000), (48000, 16000)])
def test_resample_matches_the_analytic_signal(source_rate, target_rate):
    def signal(rate):
        t = np.arange(int(0.25 * rate)) / rate
        return np.sin(2 * np.pi * 300 * t) + 0.5 * np.sin(2 * np.pi * 3100 * t + 1.0)

    out = resample(signal(source_rate), source_rate, target_rate)
    expected = signal(target_rate)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out[100:-100], expected[100:-100], atol=1e-3)
    # A tone above the target Nyquist frequency is removed.
    t = np.arange(4410) / 44100
    assert np.max(np.abs(resample(np.sin(2 * np.pi * 10000 * t), 44100, 16000)[100:-100])) < 1e-3
    with pytest.raises(ValueError, match="waveform"):
        resample(np.zeros((2, 10)), 8000, 16000)


# ----------------------------------------------------------------------------------------------------
# Examples and batching.


def test_prepare_examples_from_disk_and_memory(tree, utterances):
    from_disk = prepare_examples(list_librispeech(tree), featurize, encode)
    from_memory = prepare_examples(sorted(utterances, key=lambda u: u.id), featurize, encode)
    for a, b in zip(from_disk, from_memory, strict=True):
        assert a.id == b.id and a.text == b.text
        assert a.features.shape == b.features.shape and a.features.shape[1] == 8
        np.testing.assert_array_equal(a.targets, b.targets)
        assert a.targets.dtype == np.int32
    with pytest.raises(ValueError, match="featurize: expected"):
        prepare_examples(utterances[:1], lambda w: w, encode)


def test_make_buckets():
    lengths = np.array([10, 50, 51, 99, 120, 130, 200, 257])
    sizes = make_buckets(lengths, 4, frame_multiple=64)
    assert sizes == sorted(set(sizes)) and all(s % 64 == 0 for s in sizes)
    assert sizes[-1] >= 257 and len(sizes) <= 4
    assert make_buckets(lengths, 1) == [257]
    with pytest.raises(ValueError, match="num_buckets"):
        make_buckets(lengths, 0)


def test_padding_buckets_compute_fewer_frames_than_quantiles_on_a_long_tail():
    """A long tail of lengths: the quartiles stretch the last bucket to the longest; "padding" finds the sizes
    of least padded frames (checked against every choice of sizes), each bucket holding a batch."""
    rng = np.random.default_rng(0)
    lengths = np.concatenate([rng.integers(100, 400, 500), [1200, 1100, 900]])

    def padded(sizes):
        index = np.searchsorted(sizes, lengths)
        return int(np.asarray(sizes)[index].sum()), np.bincount(index, minlength=len(sizes))

    quartiles = make_buckets(lengths, 4, 32)
    least = make_buckets(lengths, 4, 32, method="padding", min_count=16)
    assert quartiles[-1] == least[-1] == 1216 and all(s % 32 == 0 for s in least)
    assert padded(least)[0] < 0.85 * padded(quartiles)[0]
    assert padded(least)[1].min() >= 16
    rounded = sorted(set((-(-lengths // 32) * 32).tolist()))
    best = min(
        padded([*cut, 1216])[0]
        for k in range(4)
        for cut in itertools.combinations(rounded[:-1], k)
        if padded([*cut, 1216])[1].min() >= 16
    )
    assert padded(least)[0] == best
    too_few = lengths[:20]  # not enough for two buckets of a batch each: one bucket
    assert make_buckets(too_few, 4, 32, method="padding", min_count=16) == [416]
    with pytest.raises(ValueError, match="bucketing: expected 'quantiles' or 'padding', got 'x'"):
        make_buckets(lengths, 4, method="x")
    speech = preset("speech")  # segment_length 32
    config = dataclasses.replace(
        speech, data=dataclasses.replace(speech.data, bucketing="padding", batch_size=16)
    )
    assert bucket_frames_for(config, lengths) == least


def test_plan_batches_is_deterministic_and_covers_each_example_once(examples):
    lengths = np.array([e.features.shape[0] for e in examples])
    sizes = make_buckets(lengths, 3, frame_multiple=16)
    plan = plan_batches(lengths, 8, sizes, seed=5, epoch=2, drop_last=False)
    again = plan_batches(lengths, 8, sizes, seed=5, epoch=2, drop_last=False)
    other = plan_batches(lengths, 8, sizes, seed=5, epoch=3, drop_last=False)
    assert all(np.array_equal(a, b) for a, b in zip(plan, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(plan, other, strict=False))
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(examples)))
    bucket = np.searchsorted(sizes, lengths)
    assert all(len(set(bucket[batch])) == 1 for batch in plan)
    dropped = plan_batches(lengths, 8, sizes, seed=5, epoch=2)
    assert all(len(batch) == 8 for batch in dropped) and len(dropped) <= len(plan)
    with pytest.raises(ValueError, match="longer than the largest bucket"):
        plan_batches(lengths, 8, [int(lengths.max()) - 1])


def test_batches_pad_to_a_few_static_shapes(examples):
    lengths = np.array([e.features.shape[0] for e in examples])
    sizes = make_buckets(lengths, 3, frame_multiple=16)
    right = 4
    out = list(
        batches(examples, 8, sizes, seed=1, right_pad_frames=right, target_multiple=8, drop_last=False)
    )
    shapes = {(b.features.shape, b.targets.shape) for b in out}
    assert len(shapes) <= len(sizes)
    seen = []
    for batch in out:
        bucket_size = batch.features.shape[1] - right
        assert bucket_size in sizes and batch.targets.shape[1] % 8 == 0
        assert batch.features.dtype == np.float32 and batch.targets.dtype == np.int32
        for row in range(8):
            n, u = batch.feature_lengths[row], batch.target_lengths[row]
            assert n <= bucket_size and np.all(batch.features[row, n:] == 0.0)
            assert np.all(batch.targets[row, u:] == 0)
            if batch.valid[row]:
                example = next(e for e in examples if e.id == batch.ids[row])
                np.testing.assert_array_equal(batch.features[row, :n], example.features)
                np.testing.assert_array_equal(batch.targets[row, :u], example.targets)
                seen.append(example.id)
            else:
                assert batch.ids[row] == "" and n == batch.feature_lengths[0]
    assert sorted(seen) == sorted(e.id for e in examples)
    # Resuming at batch 2 yields what the full pass yields from batch 2 on.
    resumed = list(batches(examples, 8, sizes, seed=1, right_pad_frames=right, drop_last=False, start=2))
    assert [b.ids for b in resumed] == [b.ids for b in out[2:]]


# ----------------------------------------------------------------------------------------------------
# SpecAugment.


@pytest.fixture(scope="module")
def augment():
    return jax.jit(
        partial(
            spec_augment,
            num_freq_masks=2,
            freq_mask_width=3,
            num_time_masks=2,
            time_mask_width=5,
            mask_value=-7.0,
        )
    )


def test_spec_augment_masks_only_valid_frames(augment):
    features = jnp.asarray(np.random.default_rng(0).normal(size=(16, 40, 12)), jnp.float32)
    lengths = jnp.asarray(np.random.default_rng(1).integers(8, 41, 16))
    out = np.asarray(augment(jax.random.key(0), features, lengths))
    masked = out == -7.0
    valid = np.arange(40)[None, :] < np.asarray(lengths)[:, None]
    assert masked.any() and not masked[~valid].any()
    np.testing.assert_array_equal(out[~masked], np.asarray(features)[~masked])
    # Frequency masks span whole valid rows, at most 2 * 3 channels each.
    full_channels = masked.sum(1) == np.asarray(lengths)[:, None]
    assert full_channels.sum(1).max() <= 6 and full_channels.any()
    np.testing.assert_array_equal(out, np.asarray(augment(jax.random.key(0), features, lengths)))
    assert not np.array_equal(out, np.asarray(augment(jax.random.key(1), features, lengths)))


def test_spec_augment_with_zero_masks_is_identity():
    features = jnp.ones((2, 6, 4))
    out = spec_augment(jax.random.key(0), features, jnp.array([6, 3]), num_freq_masks=0, num_time_masks=0)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(features))
    with pytest.raises(ValueError, match="lengths: expected shape"):
        spec_augment(jax.random.key(0), features, jnp.array([6]))
