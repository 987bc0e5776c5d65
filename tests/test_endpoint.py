"""Endpointing: a long stream of utterances joined by silences is cut at the silences; each piece equals its
frames decoded alone (encoder reset) or the encoder runs on uninterrupted (search reset only); the rules at
the edges of their parameters; bad parameters. The tiny model with blank favoured, so that all-zero input
("silence") decodes to blanks and random input to tokens."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from streamformer.decoding import (
    EndpointConfig,
    EndpointRule,
    GreedySearch,
    StreamingDecoder,
    endpoint_step,
    greedy_search,
)
from streamformer.decoding.endpoint import rules_fired
from tests.decoding_cases import F, tiny_model
from tests.rnnt_cases import R, S

PERIOD = 0.02  # 10 ms hop x stride 2
# (kind, input frames): three utterances, each followed by 40 frames (5 segments, 20 encoder frames) of silence
PLAN = [("speech", 16), ("silence", 40), ("speech", 24), ("silence", 40), ("speech", 16), ("silence", 40)]
# 12 encoder frames (3 segments) of silence after a token end the utterance.
RULES = (EndpointRule(True, 0.24, 0.0),)


@pytest.fixture(scope="module")
def setup():
    model, variables = tiny_model(blank_bias=1.0)
    rng = np.random.default_rng(3)
    parts = [
        rng.standard_normal((n, F)).astype(np.float32) if kind == "speech" else np.zeros((n, F), np.float32)
        for kind, n in PLAN
    ]
    x = np.concatenate(parts + [np.zeros((R, F), np.float32)])
    return model, variables, x


def _run(model, variables, x, config):
    """Streams x (one stream) segment by segment; endpoint_step after each step. Returns the pieces as
    (first step, last step, tokens) and the final state."""
    decoder = StreamingDecoder(model, variables, search=GreedySearch(3), max_tokens=64)
    state = decoder.init(1)
    pieces, first = [], 0
    steps = (len(x) - R) // S
    for step in range(steps):
        state = decoder.step(state, x[None, step * S : step * S + S + R], np.array([S + R]))
        state, finished = endpoint_step(decoder, state, config)
        for stream, hypotheses, frames in finished:
            assert stream == 0 and frames == (step + 1 - first) * S // 2
            pieces.append((first, step, hypotheses[0].tokens))  # greedy search: one hypothesis
            first = step + 1
    return pieces, state


def _silence_steps(index):
    """The segment steps of PLAN's silence number ``index`` (0, 1, 2)."""
    start = sum(n for _, n in PLAN[: 2 * index + 1])
    return range(start // S, (start + PLAN[2 * index + 1][1]) // S)


def test_long_stream_is_cut_at_the_silences(setup):
    model, variables, x = setup
    pieces, _ = _run(model, variables, x, EndpointConfig(RULES, frame_period=PERIOD, reset_encoder=True))
    assert len(pieces) == 3
    for i, (first, last, tokens) in enumerate(pieces):
        assert last in _silence_steps(i)
        assert tokens  # each utterance decodes to tokens
        # The encoder was reset as well: the piece equals its frames decoded alone.
        alone = greedy_search(
            model,
            variables,
            x[None, first * S : (last + 1) * S + R],
            np.array([(last + 1 - first) * S]),
            max_symbols_per_step=3,
        )[0][0]
        assert tokens == alone.tokens


def test_endpoint_resets_the_search_not_the_encoder(setup):
    model, variables, x = setup
    pieces, state = _run(model, variables, x, EndpointConfig(RULES, frame_period=PERIOD))
    assert [last in _silence_steps(i) for i, (_, last, _) in enumerate(pieces)] == [True] * 3
    # Without endpoints (the rule never fires in 10 s) the encoder state ends the same: it was never reset.
    never = EndpointConfig((EndpointRule(True, 10.0, 0.0),), frame_period=PERIOD)
    unbroken_pieces, unbroken = _run(model, variables, x, never)
    assert unbroken_pieces == []
    for a, b in zip(
        jax.tree_util.tree_leaves(state.transcriber), jax.tree_util.tree_leaves(unbroken.transcriber)
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The search restarted: after the last cut nothing but silence was decoded.
    assert int(state.search.lengths[0]) == 0


def test_rules_at_their_edges():
    def fired(rule, frames, tokens, last):
        config = EndpointConfig((rule,), frame_period=0.04)
        return bool(rules_fired(config, np.array([frames]), np.array([tokens]), np.array([last]), 0.04)[0])

    after_token = EndpointRule(True, 1.2, 0.0)  # 30 frames of 40 ms
    assert fired(after_token, 40, 2, 9)  # 30 frames since the last token (frames 10..39)
    assert not fired(after_token, 39, 2, 9)  # 29
    assert not fired(after_token, 100, 0, 0)  # no token yet
    no_token = EndpointRule(False, 2.4, 0.0)  # 60 frames
    assert fired(no_token, 60, 0, 0) and not fired(no_token, 59, 0, 0)
    assert fired(no_token, 70, 1, 9) and not fired(no_token, 69, 1, 9)
    length = EndpointRule(False, 0.0, 20.0)  # 500 frames
    assert fired(length, 500, 3, 499) and not fired(length, 499, 3, 498)
    zero = EndpointRule(False, 0.0, 0.0)
    assert fired(zero, 1, 0, 0) and not fired(zero, 0, 0, 0)  # never before a frame was decoded
    config = EndpointConfig()  # sherpa's three rules, any of them
    got = rules_fired(
        config, np.array([60, 30, 500, 59]), np.array([0, 1, 5, 0]), np.array([0, 0, 499, 0]), 0.04
    )
    assert got.tolist() == [True, False, True, False]
    assert rules_fired(config, np.array([31]), np.array([1]), np.array([0]), 0.04).tolist() == [True]


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="min_trailing_silence"):
        EndpointRule(True, -0.1, 0.0)
    with pytest.raises(ValueError, match="min_utterance_length"):
        EndpointRule(False, 1.0, -1)
    with pytest.raises(ValueError, match="min_trailing_silence"):
        EndpointRule(False, float("nan"), 0.0)
    with pytest.raises(ValueError, match="must_contain_nonsilence"):
        EndpointRule("yes", 1.0, 0.0)
    with pytest.raises(ValueError, match="rules"):
        EndpointConfig(())
    with pytest.raises(ValueError, match="frame_period"):
        EndpointConfig(frame_period=-0.04)
