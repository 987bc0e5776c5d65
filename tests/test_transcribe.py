"""The transcribe path on files a user brings (train/commands/transcribe.py): rates and channels, chunked features,
streaming chunks, silence and clipping, and bad files (missing, empty, undecodable) in a batch that goes on."""

import io

import jax
import numpy as np
import pytest
import soundfile

from streamformer.features import GlobalStats, log_mel_spectrogram
from streamformer.layout import SegmentLayout
from streamformer.text import Tokenizer, train_bpe
from streamformer.train import config as config_lib
from streamformer.train.commands.transcribe import (
    AudioInputError,
    read_audio,
    stream_chunks,
    stream_features,
    transcribe_files,
)
from streamformer.train.loop.step import build_model


def _tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def test_any_rate_and_channel_count_becomes_16k_mono(tmp_path):
    path = tmp_path / "stereo.wav"
    soundfile.write(path, _tone(1.5, 44100, channels=2), 44100)
    audio, notes = read_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1 and abs(audio.size - 24000) <= 1
    assert "down-mixed 2 channels" in notes and "resampled 44100 Hz -> 16000 Hz" in notes
    native = tmp_path / "native.flac"
    soundfile.write(native, _tone(0.5, 16000)[:, 0], 16000)
    audio, notes = read_audio(native, block_frames=1000)  # several blocks
    np.testing.assert_allclose(audio, soundfile.read(native, dtype="float32")[0], atol=1e-6)
    assert "resampled" not in notes and "down-mixed" not in notes


def test_bad_files_name_the_file_and_the_reason(tmp_path):
    with pytest.raises(AudioInputError, match=r"missing\.wav: no such file"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioInputError, match=r"empty\.wav: empty file"):
        read_audio(tmp_path / "empty.wav")
    (tmp_path / "junk.flac").write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioInputError, match=r"junk\.flac: cannot decode audio"):
        read_audio(tmp_path / "junk.flac")
    soundfile.write(tmp_path / "no_samples.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioInputError, match=r"no_samples\.wav: holds no audio samples"):
        read_audio(tmp_path / "no_samples.wav")
    with pytest.raises(AudioInputError, match="is a folder"):
        read_audio(tmp_path)


def test_silence_and_clipping_are_noted_not_refused(tmp_path):
    soundfile.write(tmp_path / "silence.wav", np.zeros(8000, np.float32), 16000)
    audio, notes = read_audio(tmp_path / "silence.wav")
    assert audio.size == 8000 and "silent" in notes
    loud = np.clip(_tone(1.0, 16000)[:, 0] * 10, -1, 1)
    soundfile.write(tmp_path / "clipped.wav", loud, 16000)
    assert "clipped" in read_audio(tmp_path / "clipped.wav")[1]


@pytest.mark.parametrize("seconds", [0.015, 0.7, 3.33])
def test_chunked_features_equal_the_whole_file_features(seconds):
    audio = _tone(seconds, 16000)[:, 0]
    whole = np.asarray(log_mel_spectrogram(audio[None], np.array([audio.size], np.int32))[0])
    blocks = list(stream_features(audio, block_frames=64))
    assert all(b.shape[0] <= 64 for b in blocks)
    np.testing.assert_allclose(np.concatenate(blocks), whole, rtol=1e-4, atol=1e-3)


def test_a_file_shorter_than_a_window_still_gives_a_frame():
    assert np.concatenate(list(stream_features(np.zeros(50, np.float32)))).shape == (2, 80)


@pytest.mark.parametrize("frames", [5, 48, 100, 131])
def test_stream_chunks_equal_iter_chunks(frames):
    features = np.random.default_rng(frames).standard_normal((frames, 3)).astype(np.float32)
    blocks = iter(np.array_split(features, max(frames // 17, 1)))
    ours = list(stream_chunks(blocks, 16, 4))
    reference = list(SegmentLayout(16, 4).iter_chunks(features[None], np.array([frames])))
    assert len(ours) == len(reference)
    for (chunk, length, _), (want, want_length) in zip(ours, reference):
        np.testing.assert_array_equal(length, want_length)
        np.testing.assert_array_equal(chunk, want)


class _Run:
    """What transcribe needs of a workdir.Run: a tokenizer and global stats."""

    def __init__(self, tokenizer, stats):
        self.tokenizer, self.stats = tokenizer, stats


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    train_bpe(["the cat sat on the mat", "a dog ran far away", "hello world"] * 20, folder / "t.model", 32)
    tokenizer = Tokenizer(folder / "t.model")
    config = config_lib.apply_overrides(
        config_lib.preset("tiny"),
        [
            "model.encoding_dim=32",
            "model.time_reduction_input_dim=16",
            "model.transformer_num_heads=2",
            "model.transformer_ffn_dim=32",
            "model.transformer_num_layers=1",
            "model.symbol_embedding_dim=32",
            "model.segment_length=8",
            "model.right_context_length=4",
        ],
    )
    model = build_model(config.model, tokenizer.num_symbols)
    variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    stats = GlobalStats.from_lists(np.full(80, 10.0), np.full(80, 0.2))
    return _Run(tokenizer, stats), model, variables


def test_a_batch_goes_on_past_bad_files(tmp_path, untrained, capsys):
    run, model, variables = untrained
    good = tmp_path / "good.wav"
    soundfile.write(good, _tone(2.0, 22050, channels=2), 22050)
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "junk.wav").write_bytes(b"RIFF....WAVEjunk" * 8)
    paths = [
        str(tmp_path / "missing.wav"),
        str(tmp_path / "empty.flac"),
        str(good),
        str(tmp_path / "junk.wav"),
    ]
    out = io.StringIO()
    transcripts, errors = transcribe_files(run, model, variables, paths, out=out)
    assert list(transcripts) == [str(good)] and isinstance(transcripts[str(good)], str)
    assert sorted(errors) == sorted(set(paths) - {str(good)})
    assert "no such file" in errors[paths[0]] and "empty file" in errors[paths[1]]
    assert "cannot decode" in errors[paths[3]]
    log = capsys.readouterr().err
    assert "down-mixed 2 channels" in log and "resampled 22050 Hz -> 16000 Hz" in log
    assert "real-time factor" in log and log.count("error: ") == 3
    assert out.getvalue().splitlines()[-1].startswith("final: ")
