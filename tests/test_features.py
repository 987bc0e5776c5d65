"""Parity of streamformer.features with torchaudio 2.8's MelSpectrogram and Emformer RNN-T features."""

import glob
import json
import math
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import torch

from streamformer import features as F

SR = F.SAMPLE_RATE


def _speechlike(rng, num_samples):
    """Tones plus noise plus a quiet stretch, so mel values span the piecewise log's three pieces."""
    t = np.arange(num_samples) / SR
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 2300 * t + 1.0)
    wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(num_samples)
    wave[num_samples // 3 : num_samples // 3 + 800] *= 1e-4
    return wave.astype(np.float32)


@pytest.fixture(scope="module")
def stats_path(tmp_path_factory):
    rng = np.random.default_rng(1)
    stats = F.GlobalStats.from_lists(rng.uniform(5, 20, F.N_MELS), rng.uniform(0.2, 0.4, F.N_MELS))
    path = tmp_path_factory.mktemp("stats") / "global_stats.json"
    stats.save(path)
    return path


@pytest.fixture(scope="module")
def bundle(torchaudio_ref, stats_path):
    """torchaudio's EMFORMER_RNNT_BASE_LIBRISPEECH bundle, its asset download pointed at our stats file."""
    had_utils = hasattr(torchaudio_ref, "utils")
    old = getattr(torchaudio_ref, "utils", None)
    torchaudio_ref.utils = types.SimpleNamespace(download_asset=lambda _: str(stats_path))
    try:
        rnnt_pipeline = torchaudio_ref.pipelines.rnnt_pipeline
        b = rnnt_pipeline.EMFORMER_RNNT_BASE_LIBRISPEECH
        yield types.SimpleNamespace(
            full=b.get_feature_extractor(),
            streaming=b.get_streaming_feature_extractor(),
            segment_length=b.segment_length,
            right_context_length=b.right_context_length,
            hop_length=b.hop_length,
        )
    finally:
        if had_utils:
            torchaudio_ref.utils = old
        else:
            del torchaudio_ref.utils


@pytest.fixture(scope="module")
def stats(stats_path):
    return F.GlobalStats.load(stats_path)


def _assert_close(ours, ref, rtol=1e-4):
    """Relative 1e-4, with an absolute floor of 1e-4 of the largest magnitude (values near zero)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * max(np.abs(ref).max(), 1e-6))


@pytest.mark.parametrize("sample_rate,n_fft,n_mels", [(16000, 400, 80), (8000, 256, 40), (22050, 1024, 128)])
def test_mel_filterbank_matches_torchaudio(torchaudio_ref, sample_rate, n_fft, n_mels):
    ref = torchaudio_ref.functional.melscale_fbanks(
        n_fft // 2 + 1, 0.0, float(sample_rate // 2), n_mels, sample_rate
    )
    ours = F.mel_filterbank(F.MelConfig(sample_rate=sample_rate, n_fft=n_fft, hop_length=100, n_mels=n_mels))
    assert ours.shape == tuple(ref.shape) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref.numpy(), rtol=0, atol=2e-5)


def test_mel_spectrogram_matches_torchaudio(torchaudio_ref, rng):
    waves = np.stack([_speechlike(rng, 8000), rng.uniform(-1, 1, 8000).astype(np.float32)])
    transform = torchaudio_ref.transforms.MelSpectrogram(sample_rate=SR, n_fft=400, n_mels=80, hop_length=160)
    ref = transform(torch.from_numpy(waves)).transpose(-1, -2).numpy()  # (2, 51, 80)
    ours = F.mel_spectrogram(waves)
    assert ours.shape == (2, 8000 // 160 + 1, 80) and ours.dtype == jnp.float32
    _assert_close(ours, ref)
    _assert_close(F.mel_spectrogram(waves[0]), ref[0])


def test_piecewise_linear_log_matches_torchaudio_quirk(torchaudio_ref):
    x = np.array([0.0, 1.0, 2.7, math.e, 2.72, 10.0, 15.0, math.e**math.e, 15.2, 100.0, 1e9], np.float32)
    ref = torchaudio_ref.pipelines.rnnt_pipeline._piecewise_linear_log(torch.from_numpy(x.copy())).numpy()
    ours = np.asarray(F.piecewise_linear_log(x))
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    # The quirk: values in (e, e^e] are divided by e after the log.
    assert ours[5] == pytest.approx(math.log(10.0) / math.e, rel=1e-6)
    assert F.GAIN == torchaudio_ref.pipelines.rnnt_pipeline._gain


def test_full_feature_extractor_matches_bundle(bundle, stats, rng):
    wave = _speechlike(rng, 12345)
    with torch.no_grad():
        ref_features, ref_length = bundle.full(torch.from_numpy(wave))
    features, lengths = F.FeatureExtractor(stats)(wave, sample_rate=SR)
    assert features.shape == tuple(ref_features.shape) == (12345 // 160 + 1 + F.RIGHT_PADDING, 80)
    assert lengths.tolist() == ref_length.tolist() == [12345 // 160 + 1 + F.RIGHT_PADDING]
    _assert_close(features, ref_features.numpy())
    assert not np.asarray(features[-F.RIGHT_PADDING :]).any()


def test_streaming_feature_extractor_matches_bundle(bundle, stats, rng):
    wave = _speechlike(rng, 6000)
    extractor = F.StreamingFeatureExtractor(stats)
    chunks = extractor.chunk(wave, bundle.segment_length, bundle.right_context_length)
    # torchaudio's streaming demo loop, verbatim in spirit.
    step = bundle.segment_length * bundle.hop_length
    width = step + bundle.right_context_length * bundle.hop_length
    ref_chunks, ref_features = [], []
    waveform = torch.from_numpy(wave)
    for idx in range(0, len(waveform), step):
        segment = waveform[idx : idx + width]
        segment = torch.nn.functional.pad(segment, (0, width - len(segment)))
        ref_chunks.append(segment.numpy())
        with torch.no_grad():
            ref_features.append(bundle.streaming(segment))
    np.testing.assert_array_equal(np.asarray(chunks), np.stack(ref_chunks))
    features, lengths = extractor(chunks)
    assert features.shape == (len(ref_chunks), 21, 80)
    assert lengths.tolist() == [int(r[1][0]) for r in ref_features] == [21] * len(ref_chunks)
    _assert_close(features, np.stack([r[0].numpy() for r in ref_features]))
    single, single_length = extractor(chunks[0])
    assert single.shape == (21, 80) and single_length.tolist() == [21]


@pytest.fixture(scope="module")
def ragged_batch():
    rng = np.random.default_rng(7)
    lengths = np.array([4000, 2345, 201], np.int32)  # 201 = the fewest samples reflect padding allows
    batch = rng.uniform(-1, 1, (3, 4000)).astype(np.float32)  # garbage past each length must not matter
    solos = [_speechlike(rng, int(n)) for n in lengths]
    for row, solo in zip(batch, solos, strict=True):
        row[: len(solo)] = solo
    return batch, lengths, solos


def test_batched_lengths_match_each_utterance_alone(bundle, stats, ragged_batch):
    batch, lengths, solos = ragged_batch
    features, feature_lengths = F.extract_features(batch, stats, lengths, right_padding=F.RIGHT_PADDING)
    assert features.shape == (3, 4000 // 160 + 1 + F.RIGHT_PADDING, 80)
    assert feature_lengths.dtype == jnp.int32
    for b, solo in enumerate(solos):
        with torch.no_grad():
            ref, ref_length = bundle.full(torch.from_numpy(solo))
        assert int(feature_lengths[b]) == int(ref_length[0]) == len(solo) // 160 + 1 + F.RIGHT_PADDING
        _assert_close(features[b, : int(feature_lengths[b])], ref.numpy())
        assert not np.asarray(features[b, int(feature_lengths[b]) :]).any()


def test_jit_matches_eager_and_bfloat16_input_accepted(stats, ragged_batch):
    batch, lengths, _ = ragged_batch
    eager, eager_lengths = F.extract_features(batch, stats, lengths, right_padding=4)

    @jax.jit
    def featurize(waveform, lengths, global_stats):
        return F.extract_features(waveform, global_stats, lengths, right_padding=4)

    jitted, jitted_lengths = featurize(batch, lengths, stats)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(jitted_lengths, eager_lengths)

    low = jnp.asarray(batch, jnp.bfloat16)
    from_bf16, _ = F.extract_features(low, stats, lengths, right_padding=4)
    rounded, _ = F.extract_features(np.asarray(low.astype(jnp.float32)), stats, lengths, right_padding=4)
    assert from_bf16.dtype == jnp.float32
    np.testing.assert_array_equal(from_bf16, rounded)
    assert not np.array_equal(np.asarray(from_bf16), np.asarray(eager))  # the rounding did reach the features


def test_bad_input_raises_clear_errors(stats):
    good = np.zeros(1000, np.float32)
    cases = [
        (
            ValueError,
            "waveform: expected shape",
            lambda: F.log_mel_spectrogram(np.zeros((1, 2, 1000), np.float32)),
        ),
        (ValueError, "waveform: expected shape", lambda: F.mel_spectrogram(np.float32(1.0))),
        (
            ValueError,
            "sample_rate: expected 16000",
            lambda: F.extract_features(good, stats, sample_rate=8000),
        ),
        (ValueError, "non-empty", lambda: F.mel_spectrogram(np.zeros(0, np.float32))),
        (ValueError, "non-empty", lambda: F.mel_spectrogram(np.zeros((0, 500), np.float32))),
        (ValueError, "at least n_fft // 2 \\+ 1 = 201", lambda: F.mel_spectrogram(np.zeros(200, np.float32))),
        (ValueError, "NaN or Inf", lambda: F.mel_spectrogram(np.where(np.arange(1000) == 7, np.nan, good))),
        (
            ValueError,
            "index \\(1, 3\\)",
            lambda: F.mel_spectrogram(
                np.where(np.arange(2000).reshape(2, 1000) == 1003, np.inf, 0.0).astype(np.float32)
            ),
        ),
        (TypeError, "floating dtype", lambda: F.mel_spectrogram(np.zeros(1000, np.int16))),
        (
            ValueError,
            "lengths: expected values in \\[201, 1000\\]",
            lambda: F.mel_spectrogram(np.zeros((2, 1000), np.float32), np.array([1000, 1001])),
        ),
        (
            ValueError,
            "lengths: expected shape \\(2,\\)",
            lambda: F.mel_spectrogram(np.zeros((2, 1000), np.float32), np.array([1000])),
        ),
        (
            TypeError,
            "lengths: expected an integer dtype",
            lambda: F.mel_spectrogram(np.zeros((2, 1000), np.float32), np.array([1000.0, 900.0])),
        ),
        (
            ValueError,
            "global_stats: expected mean and invstddev of shape \\(80,\\)",
            lambda: F.extract_features(good, F.GlobalStats.from_lists([0.0] * 40, [1.0] * 40)),
        ),
        (
            ValueError,
            "right_padding: expected an int >= 0",
            lambda: F.extract_features(good, stats, right_padding=-1),
        ),
        (ValueError, "MelConfig.hop_length: expected a positive int", lambda: F.MelConfig(hop_length=0)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


def test_global_stats_file_round_trip_and_torchaudio_reads_it(torchaudio_ref, stats, tmp_path):
    path = tmp_path / "stats.json"
    stats.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["stats.json"]  # no temporary file left behind
    blob = json.loads(path.read_text())
    assert set(blob) == {"mean", "invstddev"} and len(blob["mean"]) == 80
    again = F.GlobalStats.load(path)
    np.testing.assert_array_equal(again.mean, stats.mean)
    np.testing.assert_array_equal(again.invstddev, stats.invstddev)
    norm = torchaudio_ref.pipelines.rnnt_pipeline._GlobalStatsNormalization(str(path))
    np.testing.assert_array_equal(norm.mean.numpy(), stats.mean)
    (tmp_path / "bad.json").write_text('{"mean": [1.0]}')
    with pytest.raises(ValueError, match="'mean' and 'invstddev'"):
        F.GlobalStats.load(tmp_path / "bad.json")


def _torchaudio_example_stats(feature_list):
    """torchaudio's examples/asr/emformer_rnnt/global_stats.py running averages, in torch float32."""
    e_x, e_x2, n = 0, 0, 0
    for x in feature_list:
        x = torch.from_numpy(np.array(x))
        m = x.size(0)
        e_x = e_x * (n / (n + m)) + x.sum(0) / (n + m)
        e_x2 = e_x2 * (n / (n + m)) + x.pow(2).sum(0) / (n + m)
        n += m
    return e_x.numpy(), (1 / (e_x2 - e_x**2) ** 0.5).numpy()


def test_compute_global_stats_matches_torchaudio_example(ragged_batch):
    _, _, solos = ragged_batch
    per_utterance = [F.log_mel_spectrogram(solo) for solo in solos]
    stats = F.compute_global_stats(per_utterance)
    mean, invstddev = _torchaudio_example_stats(per_utterance)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-4)
    np.testing.assert_allclose(stats.invstddev, invstddev, rtol=1e-3)
    # Batched (features, lengths) pairs count only valid frames: same statistics.
    batch, lengths, _ = ragged_batch
    padded = F.log_mel_spectrogram(batch, lengths)
    batched = F.compute_global_stats([(padded, F.frame_lengths(lengths))])
    np.testing.assert_allclose(batched.mean, stats.mean, rtol=1e-5)
    np.testing.assert_allclose(batched.invstddev, stats.invstddev, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one frame"):
        F.compute_global_stats([])
    with pytest.raises(ValueError, match="zero variance in feature"):
        F.compute_global_stats([np.ones((5, 3))])


def test_global_stats_of_audio_files(tmp_path, rng):
    # The command line for statistics is `python -m train stats` (one command); this is its library function
    # for plain audio files.
    waves = [_speechlike(rng, 3000), _speechlike(rng, 1700)]
    paths = []
    for i, wave in enumerate(waves):
        path = tmp_path / f"utt{i}.{'flac' if i else 'wav'}"
        soundfile.write(path, wave, SR, subtype="FLOAT" if i == 0 else "PCM_24")
        paths.append(str(path))
    out = tmp_path / "stats.json"
    F.global_stats_of_files(paths).save(out)
    written = F.GlobalStats.load(out)
    read = [soundfile.read(p, dtype="float32")[0] for p in paths]
    expected = F.compute_global_stats(F.log_mel_spectrogram(w) for w in read)
    np.testing.assert_allclose(written.invstddev, expected.invstddev, rtol=1e-6)
    np.testing.assert_allclose(written.mean, expected.mean, rtol=1e-6)
    assert not glob.glob(os.path.join(tmp_path, ".tmp-*"))
    soundfile.write(tmp_path / "slow.wav", waves[0], 8000)
    with pytest.raises(ValueError, match="expected sample rate 16000, got 8000"):
        F.global_stats_of_files([str(tmp_path / "slow.wav")])
