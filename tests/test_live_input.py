"""Audio of live streams, piece by piece: ``LiveLogMel`` (frames as samples arrive, several streams in one
compiled call), ``StreamingResampler`` and ``ChunkFeeder.frames_to_next_chunk``; each equals its
whole-utterance counterpart and keeps only the tail it still needs."""

import numpy as np
import pytest

from streamformer.features import LiveLogMel, log_mel_spectrogram
from streamformer.layout import SegmentLayout
from streamformer.train.corpora.audio import StreamingResampler, resample


def _whole(audio: np.ndarray) -> np.ndarray:
    return np.asarray(log_mel_spectrogram(audio[None], np.array([audio.size], np.int32))[0])


def test_live_frames_equal_the_whole_utterance_frames():
    rng = np.random.default_rng(0)
    audios = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 7777, 250, 50)]
    live = LiveLogMel(len(audios), block_frames=16)
    got = [[] for _ in audios]
    offsets = [0] * len(audios)
    while any(o < a.size for o, a in zip(offsets, audios)):
        for b, audio in enumerate(audios):
            piece = int(rng.integers(0, 3000))
            live.push(b, audio[offsets[b] : offsets[b] + piece])
            offsets[b] += piece
        for b, frames in enumerate(live.frames()):
            got[b].append(frames)
            # Before the end, a frame goes once the samples under its window exist, and no earlier.
            assert live.frames_done(b) == live.frames_before_end(min(offsets[b], audios[b].size))
        assert max(s.tail.size for s in live._streams) <= 3000 + 16 * 160 + 640  # the tail, not the stream
    for b in range(len(audios)):
        live.finish(b)
    for b, frames in enumerate(live.frames()):
        got[b].append(frames)
    for b, audio in enumerate(audios):
        whole = _whole(np.pad(audio, (0, max(0, 201 - audio.size))))  # the front end's minimum
        np.testing.assert_allclose(np.concatenate(got[b]), whole, rtol=1e-4, atol=1e-3)
        assert live.total_frames(audio.size) == whole.shape[0]
    assert live.samples_for_frames(1) == 201 and live.frames_before_end(live.samples_for_frames(7)) == 7
    assert live.frames_before_end(live.samples_for_frames(7) - 1) == 6
    with pytest.raises(ValueError, match="was finished; reset it"):
        live.push(0, np.zeros(10, np.float32))
    live.reset(0)
    live.push(0, audios[1])
    live.finish(0)
    np.testing.assert_allclose(live.frames()[0], _whole(audios[1]), rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match=r"stream: expected an index in \[0, 4\), got 4"):
        live.push(4, np.zeros(3))


@pytest.mark.parametrize("rates", [(8000, 16000), (44100, 16000), (48000, 16000), (16000, 16000)])
def test_streaming_resampler_equals_resample(rates):
    rng = np.random.default_rng(1)
    audio = rng.standard_normal(rates[0] // 2 + 13).astype(np.float32)
    resampler = StreamingResampler(*rates)
    pieces, begin = [], 0
    while begin < audio.size:
        size = int(rng.integers(0, 2000))
        pieces.append(resampler.push(audio[begin : begin + size]))
        begin += size
        assert resampler._kept.size < 2000 + 200  # the filter's reach, not the stream
    pieces.append(resampler.finish())
    np.testing.assert_array_equal(np.concatenate(pieces), resample(audio, *rates))
    with pytest.raises(ValueError, match="orig_sample_rate: expected a positive integer number of Hz, got 0"):
        StreamingResampler(0, 16000)


def test_chunk_feeder_says_how_many_frames_the_next_chunk_needs():
    feeder = SegmentLayout(4, 2).feeder(1, 3)
    assert feeder.frames_to_next_chunk == 6
    assert feeder.feed(np.zeros((1, 5, 3))) == [] and feeder.frames_to_next_chunk == 1
    assert len(feeder.feed(np.zeros((1, 1, 3)))) == 1 and feeder.frames_to_next_chunk == 4
