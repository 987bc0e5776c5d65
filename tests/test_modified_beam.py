"""Modified beam search (icefall's) against a plain-Python, frame-by-frame implementation of the same
algorithm written here: one utterance at a time, hypotheses in a dict keyed by token tuples, the model's own
predict_step and joint_logits. Offline on a padded batch, and streaming with streams that start and end at
different times. The tiny model of tests/rnnt_cases.py with a scaled joiner so tokens get emitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streamformer.decoding import ModifiedBeamSearch, StreamingDecoder, modified_beam_search
from streamformer.transducer import RNNT
from tests.decoding_cases import BLANK, F, padded_sources, tiny_model
from tests.rnnt_cases import R, S, V


@pytest.fixture(scope="module")
def model_and_variables():
    return tiny_model()


@pytest.fixture(scope="module")
def sources():
    return padded_sources()


@pytest.fixture(scope="module")
def plain(model_and_variables):
    """Jitted model calls for the plain reference: predict_step on one token, joint_logits on one frame."""
    model, variables = model_and_variables
    predict = jax.jit(lambda t, s: model.apply(variables, t, s, method=RNNT.predict_step))
    join = jax.jit(
        lambda e, p: model.apply(variables, e[None, None], p[None, None], method=RNNT.joint_logits)
    )
    transcribe = jax.jit(lambda x, n: model.apply(variables, x, n, method=RNNT.transcribe))
    return predict, join, transcribe


def reference_modified_beam(plain, encodings: np.ndarray, beam_width: int):  # noqa: C901
    """icefall's modified beam search written out plainly for one utterance's frames (T', D): per frame,
    every hypothesis' log-softmax, the K best (hypothesis, token) pairs, equal token sequences merged with
    logaddexp (the first added keeps its frames and predictor state). Returns [(tokens, score, frames)],
    best first by score, and the number of merges."""
    predict, join, _ = plain
    out, state = predict(jnp.array([BLANK]), None)
    hyps = {(): (0.0, out[0], state, ())}
    merges = 0
    for t, frame in enumerate(encodings):
        candidates = []
        for tokens, (score, out, _, _) in hyps.items():
            logits = np.asarray(join(jnp.asarray(frame), out), np.float64)[0, 0, 0]
            log_probs = logits - np.logaddexp.reduce(logits)
            candidates += [(score + log_probs[v], tokens, v) for v in range(V)]
        candidates.sort(key=lambda c: -c[0])
        new = {}
        for score, tokens, v in candidates[:beam_width]:
            _, out, state, frames = hyps[tokens]
            if v != BLANK:
                out, state = predict(jnp.array([v]), state)
                out, tokens, frames = out[0], tokens + (v,), frames + (t,)
            if tokens in new:
                merges += 1
                old = new[tokens]
                new[tokens] = (np.logaddexp(old[0], score), *old[1:])
            else:
                new[tokens] = (score, out, state, frames)
        hyps = new
    ranked = sorted(hyps.items(), key=lambda h: -h[1][0])
    return [(list(tokens), score, list(frames)) for tokens, (score, _, _, frames) in ranked], merges


def assert_same(ours, theirs):
    assert [h.tokens for h in ours] == [t for t, _, _ in theirs]
    np.testing.assert_allclose([h.score for h in ours], [s for _, s, _ in theirs], atol=1e-4, rtol=0)
    assert [h.timestamps for h in ours] == [f for _, _, f in theirs]


@pytest.fixture(scope="module")
def references(plain, sources):
    """The plain reference per (beam width, utterance)."""
    x, lengths = sources
    encodings, encoding_lengths = plain[2](x, lengths)
    cache = {}

    def get(beam_width, b, merges=False):
        if (beam_width, b) not in cache:
            n = int(encoding_lengths[b])
            cache[beam_width, b] = reference_modified_beam(plain, np.asarray(encodings[b, :n]), beam_width)
        return cache[beam_width, b][1 if merges else 0]

    return get


@pytest.mark.parametrize("beam_width", [1, 2, 4])
def test_offline_equals_plain_reference_on_padded_batch(model_and_variables, sources, references, beam_width):
    model, variables = model_and_variables
    x, lengths = sources
    ours = modified_beam_search(model, variables, x, lengths, beam_width=beam_width)
    for b in range(3):
        assert_same(ours[b], references(beam_width, b))
    if beam_width == 4:
        assert sum(len(h.tokens) for h in ours[0]) > 8  # tokens are emitted
    # At most one token per frame: timestamps increase strictly and lie within the valid frames.
    for b, n in enumerate(lengths):
        for h in ours[b]:
            assert all(a < c for a, c in zip(h.timestamps, h.timestamps[1:]))
            assert all(0 <= f < n // 2 for f in h.timestamps)


def test_merges_happen(references):
    """With K = 4 candidates collide (equal token sequences from different parents), so the equality above
    covers the merge."""
    assert sum(references(4, b, merges=True) for b in range(3)) > 0


@pytest.mark.parametrize("beam_width", [2, 4])
def test_streaming_staggered_streams_equal_plain_reference(
    model_and_variables, sources, references, beam_width
):
    """Slot 0 decodes utterance 0 from step 0, slot 1 utterance 1 from step 2, slot 2 utterance 2 from step
    1; each stream ends at its own step. Every result equals the plain reference on the utterance alone."""
    model, variables = model_and_variables
    x, lengths = sources
    decoder = StreamingDecoder(model, variables, search=ModifiedBeamSearch(beam_width), max_tokens=4)
    schedule = {0: (0, 0), 1: (1, 2), 2: (2, 1)}
    state = decoder.init(3)
    for step in range(6):
        chunk = np.zeros((3, S + R, F), np.float32)
        chunk_lengths = np.zeros(3, np.int32)
        for slot, (utt, start) in schedule.items():
            i = (step - start) * S
            if 0 <= i < lengths[utt]:
                chunk[slot] = x[utt, i : i + S + R]
                chunk_lengths[slot] = S + R
        state = decoder.step(state, chunk, chunk_lengths)
    results = decoder.result(state)
    for slot, (utt, _) in schedule.items():
        assert_same(results[slot], references(beam_width, utt))


def test_bad_beam_width(model_and_variables, sources):
    model, variables = model_and_variables
    x, lengths = sources
    for bad in (0, -1, V, 2.0):
        with pytest.raises(ValueError, match="beam_width"):
            modified_beam_search(model, variables, x, lengths, beam_width=bad)
    with pytest.raises(ValueError, match="beam_width"):
        ModifiedBeamSearch(beam_width=0)
