"""Timestamps of every search, offline and streaming: greedy against a plain loop that records frames; beam
search (torchaudio's) by the prefix property (a final hypothesis' tokens stamped up to frame t are a
hypothesis of the search stopped after frame t); streaming equals offline with streams started at different
times; modified beam search's frames are checked against its plain reference in test_modified_beam.py. And
word times from SentencePiece pieces."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streamformer.decoding import (
    BeamSearch,
    GreedySearch,
    StreamingDecoder,
    Word,
    beam_search,
    frame_period,
    greedy_search,
    word_times,
)
from streamformer.transducer import RNNT
from tests.decoding_cases import BLANK, F, padded_sources, tiny_model
from tests.rnnt_cases import STRIDE, R, S


@pytest.fixture(scope="module")
def setup():
    model, variables = tiny_model()
    x, lengths = padded_sources()
    encodings, encoding_lengths = jax.jit(lambda x, n: model.apply(variables, x, n, method=RNNT.transcribe))(
        x, lengths
    )
    return model, variables, x, lengths, np.asarray(encodings), np.asarray(encoding_lengths)


def _plain_greedy(model, variables, encodings, max_symbols):
    predict = jax.jit(lambda t, s: model.apply(variables, t, s, method=RNNT.predict_step))
    join = jax.jit(
        lambda e, p: model.apply(variables, e[None, None], p[None, None], method=RNNT.joint_logits)
    )
    out, state = predict(jnp.array([BLANK]), None)
    tokens, frames = [], []
    for t, frame in enumerate(encodings):
        for _ in range(max_symbols):
            token = int(np.argmax(np.asarray(join(jnp.asarray(frame), out[0]))[0, 0, 0]))
            if token == BLANK:
                break
            tokens.append(token)
            frames.append(t)
            out, state = predict(jnp.array([token]), state)
    return tokens, frames


def _check_frames(frames, n):
    assert all(a <= b for a, b in zip(frames, frames[1:]))
    assert all(0 <= f < n for f in frames)


def test_greedy_timestamps_match_plain_loop(setup):
    model, variables, x, lengths, encodings, encoding_lengths = setup
    plain = greedy_search(model, variables, x, lengths, max_symbols_per_step=3)
    timed = greedy_search(model, variables, x, lengths, max_symbols_per_step=3, return_timestamps=True)
    assert [[(h.tokens, h.score) for h in u] for u in timed] == [
        [(h.tokens, h.score) for h in u] for u in plain
    ]
    assert all(h.timestamps is None for u in plain for h in u)  # the default return value is unchanged
    timed = [(u[0].tokens, u[0].timestamps) for u in timed]  # greedy search: one hypothesis per utterance
    repeated = False
    for b, n in enumerate(encoding_lengths):
        assert timed[b] == _plain_greedy(model, variables, encodings[b, :n], 3)
        _check_frames(timed[b][1], n)
        repeated |= len(set(timed[b][1])) < len(timed[b][1])
    assert repeated  # several tokens in one frame happen, and share its frame


@pytest.fixture(scope="module")
def offline_beam(setup):
    """Offline beam search (K = 3) with timestamps; room enough for this model's frames from the start."""
    model, variables, x, lengths, _, _ = setup
    return beam_search(
        model, variables, x, lengths, beam_width=3, expansion_capacity=32, return_timestamps=True
    )


def test_beam_timestamps_prefix_property(setup, offline_beam):
    """For every frame t, each final hypothesis' tokens stamped <= t form a hypothesis of the beam after t + 1
    frames (its ancestor). The T' truncated searches run as one batch of T' streams."""
    model, variables, x, lengths, encodings, encoding_lengths = setup
    K = 3
    ours = offline_beam
    untimed = beam_search(model, variables, x, lengths, beam_width=K, expansion_capacity=32)
    assert [[(h.tokens, h.score) for h in u] for u in ours] == [
        [(h.tokens, h.score) for h in u] for u in untimed
    ]
    assert all(h.timestamps is None for u in untimed for h in u)  # the default return value is unchanged
    search = BeamSearch(K, expansion_capacity=32)  # room enough (checked), as these runs cannot grow it
    # Every utterance b stopped after every frame count 1..n_b, as one batch of streams.
    rows = [(b, t) for b, n in enumerate(encoding_lengths) for t in range(n)]
    stacked = jnp.asarray(encodings[[b for b, _ in rows]])
    start = search.init(model, variables, len(rows), blank=BLANK, max_tokens=64)
    frames = jax.jit(search.frames, static_argnums=0, static_argnames="blank")  # the search contract's step
    truncated = frames(model, variables, start, stacked, jnp.array([t + 1 for _, t in rows]), blank=BLANK)
    assert not np.any(np.asarray(truncated.overflow))
    beams = dict(zip(rows, search.result(truncated)))
    for b, n in enumerate(encoding_lengths):
        for h in ours[b]:
            _check_frames(h.timestamps, n)
            assert len(h.timestamps) == len(h.tokens)
            for t in range(n):
                prefix = [tok for tok, f in zip(h.tokens, h.timestamps) if f <= t]
                assert prefix in [p.tokens for p in beams[b, t]], (b, t)
    assert sum(len(h.tokens) for u in ours for h in u) > 10


@pytest.mark.parametrize(
    "search",
    [GreedySearch(3, return_timestamps=True), BeamSearch(3, expansion_capacity=32, return_timestamps=True)],
)
def test_streaming_timestamps_equal_offline(setup, offline_beam, search):
    """Slot 0 starts at step 0, slot 1 at step 2, slot 2 at step 1: frames count from each stream's start.
    Beam search starts with 16 token slots and grows them (timestamps with them)."""
    model, variables, x, lengths, _, _ = setup
    if isinstance(search, GreedySearch):
        offline = greedy_search(model, variables, x, lengths, max_symbols_per_step=3, return_timestamps=True)
    else:
        offline = [u[0] for u in offline_beam]
    decoder = StreamingDecoder(
        model, variables, search=search, max_tokens=16 if isinstance(search, BeamSearch) else 64
    )
    starts = [0, 2, 1]
    state = decoder.init(3)
    for step in range(7):
        chunk = np.zeros((3, S + R, F), np.float32)
        chunk_lengths = np.zeros(3, np.int32)
        for b, start in enumerate(starts):
            i = (step - start) * S
            if 0 <= i < lengths[b]:
                chunk[b] = x[b, i : i + S + R]
                chunk_lengths[b] = S + R
        state = decoder.step(state, chunk, chunk_lengths)
    results = [u[0] for u in decoder.result(state)]
    if isinstance(search, GreedySearch):
        offline = [u[0] for u in offline]
    assert [(h.tokens, h.timestamps) for h in results] == [(h.tokens, h.timestamps) for h in offline]


def test_word_times():
    period = frame_period(type("C", (), {"time_reduction_stride": 4})())
    assert period == pytest.approx(0.04)
    words = word_times(["\u2581he", "llo", "\u2581wor", "ld", "\u2581", "!"], [2, 3, 10, 12, 20, 20], period)
    assert words == [
        Word("hello", pytest.approx(0.08), pytest.approx(0.16)),
        Word("world", pytest.approx(0.40), pytest.approx(0.52)),
        Word("!", pytest.approx(0.80), pytest.approx(0.84)),
    ]
    assert word_times(["ab", "\u2581c"], [0, 1], 0.1, offset=1.0) == [
        Word("ab", 1.0, pytest.approx(1.1)),
        Word("c", pytest.approx(1.1), pytest.approx(1.2)),
    ]
    assert word_times([], [], 0.04) == []
    with pytest.raises(ValueError, match="frames"):
        word_times(["\u2581a"], [0, 1], 0.04)
    with pytest.raises(ValueError, match="non-decreasing"):
        word_times(["\u2581a", "\u2581b"], [3, 1], 0.04)
    with pytest.raises(ValueError, match="period"):
        word_times(["\u2581a"], [0], 0.0)
    with pytest.raises(ValueError, match="hop_seconds"):
        frame_period(type("C", (), {"time_reduction_stride": 4})(), hop_seconds=-0.01)
    assert STRIDE == 2
