"""SegmentLayout's host-side helpers: padded lengths and the incremental chunk feeder, which must give exactly
the chunks ``iter_chunks`` gives for the whole utterance, however the frames arrive."""

from __future__ import annotations

import numpy as np
import pytest

from streamformer import SegmentLayout


def _feed_in_pieces(layout, features: np.ndarray, piece: int):
    feeder = layout.feeder(features.shape[0], features.shape[2])
    chunks = []
    for start in range(0, features.shape[1], piece):
        chunks.extend(feeder.feed(features[:, start : start + piece]))
    return chunks + feeder.finish()


@pytest.mark.parametrize("S, R", [(4, 2), (8, 0), (3, 5)])
@pytest.mark.parametrize("frames", [0, 1, 3, 4, 6, 7, 13, 24, 25])
def test_feeder_gives_the_chunks_of_iter_chunks(S, R, frames):
    """Fed 1 frame at a time, a few, more than a chunk, or all at once."""
    layout = SegmentLayout(S, R)
    features = np.random.default_rng(frames).standard_normal((2, frames, 3)).astype(np.float32)
    whole = list(layout.iter_chunks(features, np.array([frames, frames])))
    assert len(whole) == layout.num_segments(frames)
    for piece in (1, 2, 5, 17, 100):
        fed = _feed_in_pieces(layout, features, piece)
        assert len(fed) == len(whole), piece
        for (chunk, lengths), (want, want_lengths) in zip(fed, whole):
            np.testing.assert_array_equal(lengths, want_lengths)
            np.testing.assert_array_equal(chunk, want)


def test_feeder_sends_a_segment_once_its_look_ahead_exists():
    feeder = SegmentLayout(4, 2).feeder(1, 1)
    assert feeder.feed(np.zeros((1, 5, 1))) == []  # 4 segment frames, 1 of 2 look-ahead frames
    ((chunk, lengths),) = feeder.feed(np.ones((1, 1, 1)))
    assert chunk.shape == (1, 6, 1) and lengths.tolist() == [6]
    assert len(feeder.feed(np.zeros((1, 0, 1)))) == 0
    assert [int(n[0]) for _, n in feeder.finish()] == [2 + 2]  # the 2 frames left, then their look-ahead
    assert feeder.finish() == []


def test_feeder_checks_its_frames():
    feeder = SegmentLayout(4, 2).feeder(2, 3)
    with pytest.raises(ValueError, match=r"frames: expected shape \(B, n, F\)"):
        feeder.feed(np.zeros((1, 4, 3)))
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1"):
        SegmentLayout(4, 2).feeder(0, 3)


def test_padded_frames_are_whole_segments():
    layout = SegmentLayout(8, 4)
    assert [layout.padded_frames(n) for n in (0, 1, 8, 9, 16)] == [0, 8, 8, 16, 16]
