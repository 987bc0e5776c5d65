"""Decoding: greedy search against a plain frame-by-frame loop, beam search against torchaudio 2.8's
RNNTBeamSearch (offline ``forward`` and streaming ``infer``), streaming against offline, batches of streams at
different positions, and argument errors. One tiny model converted from torchaudio; compiled functions are
shared through module-scoped fixtures."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from streamformer.convert import from_torchaudio
from streamformer.decoding import (
    BeamSearch,
    GreedySearch,
    Hypothesis,
    Search,
    StreamingDecoder,
    beam_search,
    decode,
    greedy_search,
)
from streamformer.transducer import emformer_rnnt_model
from tests.rnnt_cases import TINY_RNNT, R, S, V

# Segments of 8 + 4 input frames, stride 2: 4 encoder frames per segment. Blank is the last token (V - 1).
CONFIG = dict(TINY_RNNT)
F = 8
BLANK = V - 1
SCORE_ATOL = 1e-3


@pytest.fixture(scope="module")
def pair(torchaudio_ref):
    """(our model, variables, torchaudio model) with the same weights. The joiner's output layer is scaled up
    and the blank made less likely, so that distributions are peaked and tokens are emitted, several per frame
    at times."""
    torch.manual_seed(0)
    reference = torchaudio_ref.models.emformer_rnnt_model(**CONFIG).eval()
    with torch.no_grad():
        reference.joiner.linear.weight.mul_(3.0)
        reference.joiner.linear.bias[BLANK] -= 1.0
    model = emformer_rnnt_model(**CONFIG)
    return model, from_torchaudio(model, reference.state_dict()), reference


@pytest.fixture(scope="module")
def sources():
    """Three utterances of 40, 24 and 16 frames (5, 3, 2 full segments), padded to 40 + R frames."""
    rng = np.random.default_rng(0)
    lengths = np.array([40, 24, 16])
    x = rng.standard_normal((3, 40 + R, F)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n + R :] = 0.0
    return x, lengths


@pytest.fixture(scope="module")
def beam_decoder(pair):
    model, variables, _ = pair
    return StreamingDecoder(model, variables, search=BeamSearch(3))


@pytest.fixture(scope="module")
def torch_search(pair, torchaudio_ref):
    return torchaudio_ref.models.RNNTBeamSearch(pair[2], blank=BLANK)


@pytest.fixture(scope="module")
def offline3(pair, sources):
    """Offline beam search (K = 3) of the three utterances as one padded batch."""
    model, variables, _ = pair
    x, lengths = sources
    return beam_search(model, variables, x, lengths, beam_width=3)


def _assert_same_hypotheses(ours: list[Hypothesis], theirs) -> None:
    """All of torchaudio's hypotheses, in order: tokens (theirs start with the blank) and scores."""
    assert len(ours) == len(theirs)
    for hyp, (tokens, _, _, score) in zip(ours, theirs, strict=True):
        assert tokens[0] == BLANK
        assert hyp.tokens == list(tokens[1:])
        assert abs(hyp.score - float(score)) < SCORE_ATOL, (hyp.score, float(score))


def _chunks(utterance: np.ndarray, length: int):
    """Full segments of S frames, each followed by its R right-context frames (torchaudio's infer input)."""
    return [utterance[i : i + S + R] for i in range(0, length, S)]


# ------------------------------------------------------------------------------------------------------------
# Greedy search


@pytest.fixture(scope="module")
def plain_fns(pair):
    model, variables, _ = pair
    predict = jax.jit(lambda t, s: model.apply(variables, t, jnp.array([1]), s, method="predict"))
    join = jax.jit(lambda e, p: model.apply(variables, e, p, method="joint_logits"))
    transcribe = jax.jit(lambda x, n: model.apply(variables, x, n, method="transcribe"))
    return predict, join, transcribe


def _reference_greedy(plain_fns, encodings, max_symbols):
    """A plain loop over one utterance's encoder frames (T', D): per frame join, arg max, and predict on a
    non-blank token, at most max_symbols times. Returns the tokens and the path's log-probability (the sum
    of the chosen symbols' log-probabilities, the blanks that end frames included)."""
    predict, join, _ = plain_fns
    out, state = predict(jnp.array([[BLANK]]), None)[0::2]
    tokens, score = [], 0.0
    for frame in encodings:
        for _ in range(max_symbols):
            logits = np.asarray(join(jnp.asarray(frame)[None, None], out), np.float64)[0, 0, 0]
            token = int(np.argmax(logits))
            score += logits[token] - np.logaddexp.reduce(logits)
            if token == BLANK:
                break
            tokens.append(token)
            out, _, state = predict(jnp.array([[token]]), state)
    return tokens, score


def _best_tokens(results: list[list[Hypothesis]]) -> list[list[int]]:
    return [hypotheses[0].tokens for hypotheses in results]


@pytest.mark.parametrize("max_symbols", [1, 3])
def test_greedy_matches_plain_loop(pair, sources, plain_fns, max_symbols):
    model, variables, _ = pair
    x, lengths = sources
    ours = greedy_search(model, variables, x, lengths, max_symbols_per_step=max_symbols)
    encodings, encoding_lengths = plain_fns[2](x, lengths)
    for b, n in enumerate(np.asarray(encoding_lengths)):
        tokens, score = _reference_greedy(plain_fns, np.asarray(encodings[b, :n]), max_symbols)
        assert [h.tokens for h in ours[b]] == [tokens]  # one hypothesis per utterance
        assert abs(ours[b][0].score - score) < SCORE_ATOL, (ours[b][0].score, score)
    assert sum(len(t) for t in _best_tokens(ours)) > 6  # non-trivial: tokens are emitted
    if max_symbols == 3:
        counts = [len(t) for t in _best_tokens(ours)]
        capped = greedy_search(model, variables, x, lengths, max_symbols_per_step=1)
        assert [len(t) for t in _best_tokens(capped)] != counts  # several tokens per frame do happen
    # Any object with the search contract decodes: here one of our own, written over GreedySearch.
    assert isinstance(GreedySearch(), Search) and isinstance(_OwnSearch(GreedySearch()), Search)
    if max_symbols == 3:
        assert decode(model, variables, x, lengths, _OwnSearch(GreedySearch(3))) == ours


@dataclasses.dataclass(frozen=True)
class _OwnSearch(Search):
    """A search written outside streamformer: the contract's three methods, the defaults for the rest."""

    inner: GreedySearch

    def init(self, model, variables, batch_size, *, blank, max_tokens):
        return self.inner.init(model, variables, batch_size, blank=blank, max_tokens=max_tokens)

    def frames(self, model, variables, state, encodings, lengths, *, blank):
        return self.inner.frames(model, variables, state, encodings, lengths, blank=blank)

    def result(self, state):
        return self.inner.result(state)

    def token_room(self, frames):
        return self.inner.token_room(frames)


def test_greedy_streaming_equals_offline(pair, sources):
    model, variables, _ = pair
    x, lengths = sources
    decoder = StreamingDecoder(model, variables, search=GreedySearch(3))
    state = decoder.init(3)
    for i in range(0, 40, S):
        valid = np.clip(lengths - i, 0, S)
        state = decoder.step(state, x[:, i : i + S + R], np.where(valid > 0, valid + R, 0))
    offline = greedy_search(model, variables, x, lengths, max_symbols_per_step=3)
    assert _best_tokens(decoder.result(state)) == _best_tokens(offline)
    np.testing.assert_allclose(
        [u[0].score for u in decoder.result(state)], [u[0].score for u in offline], atol=SCORE_ATOL
    )
    offline = _best_tokens(offline)
    # Slot 1 starts afresh on utterance 0 while the others stay as they were.
    state = decoder.reset(state, np.array([False, True, False]))
    assert _best_tokens(decoder.result(state)) == [offline[0], [], offline[2]]
    for i in range(0, 40, S):
        chunk = np.zeros((3, S + R, F), np.float32)
        chunk[1] = x[0, i : i + S + R]
        state = decoder.step(state, chunk, np.array([0, S + R, 0]))
    assert _best_tokens(decoder.result(state)) == [offline[0], offline[0], offline[2]]


# ------------------------------------------------------------------------------------------------------------
# Beam search against torchaudio


@pytest.mark.parametrize("beam_width", [1, 3, 5])
def test_beam_search_matches_torchaudio_forward(pair, sources, torch_search, offline3, beam_width):
    """A padded batch of three utterances against torchaudio's forward on each alone: every hypothesis."""
    model, variables, _ = pair
    x, lengths = sources
    ours = offline3 if beam_width == 3 else beam_search(model, variables, x, lengths, beam_width=beam_width)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            theirs = torch_search(torch.from_numpy(x[b, : n + R]), torch.tensor(n), beam_width)
        _assert_same_hypotheses(ours[b], theirs)
        assert len({tuple(h.tokens) for h in ours[b]}) == len(ours[b])  # identical sequences were merged


def test_temperature_and_step_max_tokens_match_torchaudio(pair, sources, torchaudio_ref):
    model, variables, reference = pair
    x, lengths = sources
    ours = beam_search(model, variables, x, lengths, beam_width=3, temperature=2.0, step_max_tokens=1)
    search = torchaudio_ref.models.RNNTBeamSearch(reference, blank=BLANK, temperature=2.0, step_max_tokens=1)
    for b, n in enumerate(lengths):
        with torch.no_grad():
            theirs = search(torch.from_numpy(x[b, : n + R]), torch.tensor(n), 3)
        _assert_same_hypotheses(ours[b], theirs)


@pytest.mark.parametrize("beam_width", [3, 5])
def test_streaming_beam_matches_torchaudio_infer(pair, sources, torch_search, beam_decoder, beam_width):
    """torchaudio's infer, one utterance at a time with state and hypotheses carried, against our decoder
    running the three utterances as one batch (streams finishing at different steps)."""
    model, variables, _ = pair
    x, lengths = sources
    decoder = (
        beam_decoder if beam_width == 3 else StreamingDecoder(model, variables, search=BeamSearch(beam_width))
    )
    state = decoder.init(3)
    for i in range(0, 40, S):
        state = decoder.step(state, x[:, i : i + S + R], np.where(lengths > i, S + R, 0))
    ours = decoder.result(state)
    for b, n in enumerate(lengths):
        hypos, ta_state = None, None
        for chunk in _chunks(x[b], n):
            with torch.no_grad():
                hypos, ta_state = torch_search.infer(
                    torch.from_numpy(chunk), torch.tensor(S + R), beam_width, ta_state, hypos
                )
        _assert_same_hypotheses(ours[b], hypos)


# ------------------------------------------------------------------------------------------------------------
# Streaming: each stream as if alone


def test_streaming_equals_offline_with_staggered_streams_and_reset(pair, sources, beam_decoder, offline3):
    """Slot 0 decodes utterance 0 from step 0; slot 1 starts utterance 1 at step 3; slot 2 decodes
    utterance 2, is reset, then decodes utterance 1 from step 2. Every utterance must come out as offline
    beam search gives it (offline3, checked against torchaudio on each utterance alone)."""
    x, lengths = sources
    offline = offline3
    schedule = {0: (0, 0), 1: (1, 3), 2: (2, 0)}  # slot: (utterance, start step)
    decoder_state = beam_decoder.init(3)
    for step in range(6):
        chunk = np.zeros((3, S + R, F), np.float32)
        chunk_lengths = np.zeros(3, np.int32)
        for slot, (utt, start) in schedule.items():
            i = (step - start) * S
            if 0 <= i < lengths[utt]:
                chunk[slot] = x[utt, i : i + S + R]
                chunk_lengths[slot] = S + R
        decoder_state = beam_decoder.step(decoder_state, chunk, chunk_lengths)
        if step == 1:  # slot 2 has finished utterance 2 (2 segments): check it, then reuse the slot
            result = beam_decoder.result(decoder_state)[2]
            assert [h.tokens for h in result] == [h.tokens for h in offline[2]]
            np.testing.assert_allclose(
                [h.score for h in result], [h.score for h in offline[2]], atol=SCORE_ATOL
            )
            decoder_state = beam_decoder.reset(decoder_state, np.array([False, False, True]))
            schedule[2] = (1, 2)
    results = beam_decoder.result(decoder_state)
    for slot, (utt, _) in schedule.items():
        assert [h.tokens for h in results[slot]] == [h.tokens for h in offline[utt]]
        np.testing.assert_allclose(
            [h.score for h in results[slot]], [h.score for h in offline[utt]], atol=SCORE_ATOL
        )


def test_overflow_grows_room_and_keeps_results(pair, sources):
    """Tiny initial room for expansions and tokens: the search reruns with more and gives the same result."""
    model, variables, _ = pair
    x, lengths = sources
    roomy = beam_search(model, variables, x, lengths, beam_width=3)
    tight = beam_search(model, variables, x, lengths, beam_width=3, expansion_capacity=2, max_tokens=2)
    assert [[h.tokens for h in u] for u in tight] == [[h.tokens for h in u] for u in roomy]
    assert max(len(h.tokens) for u in roomy for h in u) > 2


# ------------------------------------------------------------------------------------------------------------
# Errors


def test_bad_arguments_are_rejected(pair, sources):
    model, variables, _ = pair
    x, lengths = sources
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, variables, x, lengths, beam_width=0)
    with pytest.raises(ValueError, match="beam_width"):
        beam_search(model, variables, x, lengths, beam_width=V)
    with pytest.raises(ValueError, match="blank"):
        beam_search(model, variables, x, lengths, beam_width=2, blank=V)
    with pytest.raises(ValueError, match="blank"):
        greedy_search(model, variables, x, lengths, blank=-V - 1)
    with pytest.raises(ValueError, match="sources"):
        greedy_search(model, variables, x[:, :, :-1], lengths)
    with pytest.raises(ValueError, match="sources"):
        beam_search(model, variables, x[0], lengths, beam_width=2)
    with pytest.raises(ValueError, match="source_lengths"):
        greedy_search(model, variables, x, lengths[:2])
    with pytest.raises(ValueError, match="source_lengths"):
        greedy_search(model, variables, x, np.array([41, 1, 1]))
    with pytest.raises(ValueError, match="temperature"):
        beam_search(model, variables, x, lengths, beam_width=2, temperature=0.0)
    with pytest.raises(ValueError, match="max_symbols_per_step"):
        greedy_search(model, variables, x, lengths, max_symbols_per_step=0)
    decoder = StreamingDecoder(model, variables, search=BeamSearch(2))
    state = decoder.init(2)
    with pytest.raises(ValueError, match="segment_features"):
        decoder.step(state, np.zeros((2, S, F), np.float32), np.array([S, S]))
    with pytest.raises(ValueError, match="segment_lengths"):
        decoder.step(state, np.zeros((2, S + R, F), np.float32), np.array([S + R + 1, 0]))
    with pytest.raises(ValueError, match="mask"):
        decoder.reset(state, np.array([True]))
    with pytest.raises(TypeError, match="search: .* got object without init, frames, result"):
        StreamingDecoder(model, variables, search=object())
    with pytest.raises(TypeError, match="search: expected a hashable"):
        decode(model, variables, x, lengths, _UnhashableSearch())


class _UnhashableSearch(GreedySearch):
    __hash__ = None
