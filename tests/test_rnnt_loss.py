"""RNN-T loss: values against brute force and a numpy DP, gradients against autodiff of a plain reference and
finite differences, padding, blank position, long inputs, bfloat16, jit/vmap, the chunked entry point, errors.

float64 checks run inside ``jax.enable_x64(True)`` (a scoped context manager in jax 0.10), so x64 never leaks
into other test modules.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streamformer.losses import rnnt_loss, rnnt_loss_from_encodings

STATIC = ("blank", "clamp", "reduction", "fused_log_softmax", "fastemit_lambda")


# --------------------------------------------------------------------------------------------------
# References
# --------------------------------------------------------------------------------------------------


def log_softmax_np(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def brute_force_cost(log_probs: np.ndarray, labels: np.ndarray, blank: int) -> float:
    """-log of the sum over every alignment of T blanks and U labels (the last symbol a blank at (T-1, U))."""
    frames, nodes, _ = log_probs.shape
    num_labels = nodes - 1
    scores = []
    for label_steps in itertools.combinations(range(frames - 1 + num_labels), num_labels):
        t = u = 0
        score = 0.0
        label_steps = set(label_steps)
        for step in range(frames - 1 + num_labels):
            if step in label_steps:
                score += log_probs[t, u, labels[u]]
                u += 1
            else:
                score += log_probs[t, u, blank]
                t += 1
        scores.append(score + log_probs[frames - 1, num_labels, blank])
    return -float(np.logaddexp.reduce(scores))


def dp_cost(log_probs: np.ndarray, labels: np.ndarray, blank: int) -> float:
    """Straightforward float64 forward recursion over one sequence's (T, U + 1) lattice."""
    frames, nodes, _ = log_probs.shape
    alpha = np.full((frames, nodes), -np.inf)
    alpha[0, 0] = 0.0
    for t in range(frames):
        for u in range(nodes):
            if t > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t - 1, u] + log_probs[t - 1, u, blank])
            if u > 0:
                alpha[t, u] = np.logaddexp(alpha[t, u], alpha[t, u - 1] + log_probs[t, u - 1, labels[u - 1]])
    return -float(alpha[-1, -1] + log_probs[-1, -1, blank])


def reference_costs(logits, targets, logit_lengths, target_lengths, blank, fused=True, cost=dp_cost):
    """Per-sequence numpy costs, each sequence cut to its own lengths."""
    log_probs = log_softmax_np(logits) if fused else np.asarray(logits, np.float64)
    blank = blank % logits.shape[-1]
    return np.array(
        [
            cost(
                log_probs[b, : logit_lengths[b], : target_lengths[b] + 1],
                targets[b, : target_lengths[b]],
                blank,
            )
            for b in range(len(logits))
        ]
    )


def jnp_reference_loss(logits, targets, logit_lengths, target_lengths, blank, fused=True, emit_scale=1.0):
    """Sum of per-sequence costs by Python loops over each (concrete) valid lattice: differentiable by jax.

    ``emit_scale`` multiplies the gradient reaching the label log-probabilities (FastEmit's definition) and
    leaves the value unchanged.
    """
    log_probs = jax.nn.log_softmax(logits, axis=-1) if fused else logits
    blank = blank % logits.shape[-1]
    total = 0.0
    for b in range(logits.shape[0]):
        frames, labels = int(logit_lengths[b]), int(target_lengths[b])
        lp = log_probs[b]

        def emit(t, u, lp=lp, b=b):
            x = lp[t, u, targets[b, u]]
            return x + (emit_scale - 1.0) * (x - jax.lax.stop_gradient(x))

        alpha = {(0, 0): 0.0}
        for t in range(frames):
            for u in range(labels + 1):
                if (t, u) == (0, 0):
                    continue
                terms = []
                if t > 0:
                    terms.append(alpha[t - 1, u] + lp[t - 1, u, blank])
                if u > 0:
                    terms.append(alpha[t, u - 1] + emit(t, u - 1))
                alpha[t, u] = terms[0] if len(terms) == 1 else jnp.logaddexp(*terms)
        total = total - (alpha[frames - 1, labels] + lp[frames - 1, labels, blank])
    return total


def make_batch(rng, batch, frames, labels, vocab, blank=-1, junk=1e4, dtype=np.float32):
    """Random logits with junk in every padded node, lengths that include a zero-length target."""
    blank = blank % vocab
    logits = rng.normal(size=(batch, frames, labels + 1, vocab)).astype(dtype)
    non_blank = np.array([v for v in range(vocab) if v != blank])
    targets = non_blank[rng.integers(0, len(non_blank), size=(batch, labels))].astype(np.int32)
    logit_lengths = np.array([frames] + list(rng.integers(1, frames + 1, size=batch - 1)), np.int32)
    target_lengths = np.array([labels] + list(rng.integers(0, labels + 1, size=batch - 1)), np.int32)
    if batch > 2:
        target_lengths[2] = 0
    for b in range(batch):
        logits[b, logit_lengths[b] :] = junk
        logits[b, :, target_lengths[b] + 1 :] = -junk
        targets[b, target_lengths[b] :] = blank  # padding may hold anything, the blank included
    return logits, targets, logit_lengths, target_lengths


@pytest.fixture(scope="module")
def loss_fn():
    return jax.jit(rnnt_loss, static_argnames=STATIC)


@pytest.fixture(scope="module")
def grad_fn():
    def total(logits, *args, **kwargs):
        return jnp.sum(rnnt_loss(logits, *args, reduction="none", **kwargs))

    return jax.jit(jax.grad(total), static_argnames=tuple(s for s in STATIC if s != "reduction"))


@pytest.fixture(scope="module")
def small_batch():
    return make_batch(np.random.default_rng(0), 4, 6, 4, 5)


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", [0, 2, 4, -1])
def test_values_equal_brute_force_float32(loss_fn, blank):
    logits, targets, logit_lengths, target_lengths = make_batch(np.random.default_rng(1), 3, 4, 3, 5, blank)
    expected = reference_costs(logits, targets, logit_lengths, target_lengths, blank, cost=brute_force_cost)
    got = loss_fn(logits, targets, logit_lengths, target_lengths, blank=blank, reduction="none")
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_values_float64_brute_force_and_dp():
    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        tiny = make_batch(rng, 3, 4, 3, 5, blank=1, dtype=np.float64)
        expected = reference_costs(*tiny, 1, cost=brute_force_cost)
        loss64 = jax.jit(rnnt_loss, static_argnames=STATIC)
        got = loss64(*tiny, blank=1, reduction="none")
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)

        larger = make_batch(rng, 4, 25, 10, 7, blank=0, dtype=np.float64)
        expected = reference_costs(*larger, 0)
        np.testing.assert_allclose(
            np.asarray(loss64(*larger, blank=0, reduction="none")), expected, rtol=1e-5
        )
        # Without the fused log-softmax the inputs are taken as log-probabilities.
        log_probs = log_softmax_np(larger[0])
        got = loss64(log_probs, *larger[1:], blank=0, reduction="none", fused_log_softmax=False)
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
    # The context manager is scoped: float64 does not leak out of this test.
    assert not jax.config.jax_enable_x64 and jnp.zeros(1).dtype == jnp.float32


def test_values_equal_dp_float32_larger(loss_fn):
    batch = make_batch(np.random.default_rng(3), 4, 30, 12, 7, blank=3)
    expected = reference_costs(*batch, 3)
    got = loss_fn(*batch, blank=3, reduction="none")
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-4)


def test_reductions(loss_fn, small_batch):
    costs = np.asarray(loss_fn(*small_batch, reduction="none"))
    assert costs.shape == (4,)
    np.testing.assert_allclose(float(loss_fn(*small_batch, reduction="mean")), costs.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(loss_fn(*small_batch, reduction="sum")), costs.sum(), rtol=1e-6)


def test_target_length_zero_everywhere():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 5, 1, 4)).astype(np.float32)
    targets = np.zeros((2, 0), np.int32)
    lengths = np.array([5, 3], np.int32)
    got = jax.jit(rnnt_loss, static_argnames=STATIC)(
        logits, targets, lengths, np.zeros(2, np.int32), reduction="none"
    )
    blank_lp = log_softmax_np(logits)[:, :, 0, -1]
    expected = [-blank_lp[0].sum(), -blank_lp[1, :3].sum()]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_float64_reference_and_finite_differences(fused):
    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        logits, targets, logit_lengths, target_lengths = make_batch(
            rng, 3, 5, 3, 4, blank=1, dtype=np.float64
        )
        if not fused:  # log-probability inputs (junk padding kept)
            valid = logits[..., :1] < 1e3
            logits = np.where(valid, log_softmax_np(logits), logits)
        args = (targets, logit_lengths, target_lengths)

        @jax.jit
        def ours(x):
            return jnp.sum(rnnt_loss(x, *args, blank=1, reduction="none", fused_log_softmax=fused))

        grad = np.asarray(jax.grad(ours)(logits))
        expected = np.asarray(
            jax.jit(jax.grad(lambda x: jnp_reference_loss(x, *args, 1, fused=fused)))(logits)
        )
        np.testing.assert_allclose(grad, expected, rtol=1e-7, atol=1e-10)

        # Central differences at a sample of valid coordinates.
        valid_nodes = [
            (b, t, u) for b in range(3) for t in range(logit_lengths[b]) for u in range(target_lengths[b] + 1)
        ]
        eps = 1e-6
        for i in rng.choice(len(valid_nodes), size=6, replace=False):
            b, t, u = valid_nodes[i]
            v = int(rng.integers(0, 4))
            step = np.zeros_like(logits)
            step[b, t, u, v] = eps
            numeric = (float(ours(logits + step)) - float(ours(logits - step))) / (2 * eps)
            np.testing.assert_allclose(grad[b, t, u, v], numeric, rtol=1e-5, atol=1e-8)


def test_gradient_exactly_zero_outside_valid_region(grad_fn, small_batch):
    logits, targets, logit_lengths, target_lengths = small_batch
    grad = np.asarray(grad_fn(logits, targets, logit_lengths, target_lengths))
    assert np.all(np.isfinite(grad))
    t = np.arange(logits.shape[1])[None, :, None]
    u = np.arange(logits.shape[2])[None, None, :]
    outside = (t >= logit_lengths[:, None, None]) | (u > target_lengths[:, None, None])
    assert outside.any() and (~outside).any()
    assert np.all(grad[outside] == 0.0)
    assert np.all(np.abs(grad[~outside]).sum(-1) > 0)


def test_padding_never_changes_loss_or_gradient(loss_fn, grad_fn, small_batch):
    logits, targets, logit_lengths, target_lengths = small_batch
    costs = np.asarray(loss_fn(logits, targets, logit_lengths, target_lengths, reduction="none"))
    grad = np.asarray(grad_fn(logits, targets, logit_lengths, target_lengths))
    # Different junk (including inf and out-of-range padding labels) must not matter.
    other = logits.copy()
    for b in range(len(logits)):
        other[b, logit_lengths[b] :] = np.inf
        other[b, :, target_lengths[b] + 1 :] = -3e4
    other_targets = np.where(np.arange(targets.shape[1]) < target_lengths[:, None], targets, 999)
    np.testing.assert_array_equal(
        costs, np.asarray(loss_fn(other, other_targets, logit_lengths, target_lengths, reduction="none"))
    )
    np.testing.assert_array_equal(
        grad, np.asarray(grad_fn(other, other_targets, logit_lengths, target_lengths))
    )
    # Each sequence alone in a batch of one: the rest of the batch does not matter either.
    for b in range(len(logits)):
        alone = (logits[b : b + 1], targets[b : b + 1], logit_lengths[b : b + 1], target_lengths[b : b + 1])
        np.testing.assert_allclose(float(loss_fn(*alone, reduction="sum")), costs[b], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(grad_fn(*alone))[0], grad[b], rtol=1e-5, atol=1e-7)


def test_clamp_clips_each_sequence_gradient_before_the_reduction(loss_fn, small_batch):
    clamp = 0.05

    def grad(reduction, clamp):
        return np.asarray(
            jax.grad(lambda x: loss_fn(x, *small_batch[1:], reduction=reduction, clamp=clamp))(small_batch[0])
        )

    unclamped = grad("sum", -1.0)
    assert np.abs(unclamped).max() > clamp
    np.testing.assert_allclose(grad("sum", clamp), np.clip(unclamped, -clamp, clamp), rtol=1e-6)
    np.testing.assert_allclose(grad("mean", clamp), np.clip(unclamped, -clamp, clamp) / 4, rtol=1e-6)
    # The value is unchanged by clamping.
    assert float(loss_fn(*small_batch, clamp=clamp)) == float(loss_fn(*small_batch))


def test_fastemit(loss_fn, grad_fn, small_batch):
    logits, targets, logit_lengths, target_lengths = small_batch
    plain = np.asarray(grad_fn(*small_batch))
    np.testing.assert_array_equal(plain, np.asarray(grad_fn(*small_batch, fastemit_lambda=0.0)))
    lam = 0.5
    fast = np.asarray(grad_fn(*small_batch, fastemit_lambda=lam))
    assert float(loss_fn(*small_batch, fastemit_lambda=lam)) == float(loss_fn(*small_batch))
    # Exactly the gradient with the label-emission log-probabilities' gradient scaled by 1 + lambda.
    expected = jax.jit(
        jax.grad(
            lambda x: jnp_reference_loss(x, targets, logit_lengths, target_lengths, -1, emit_scale=1 + lam)
        )
    )(logits)
    np.testing.assert_allclose(fast, np.asarray(expected), rtol=1e-4, atol=1e-6)
    # Direction: emitting the next label gets more attractive (more negative gradient on its logit),
    # blank less.
    label_index = np.concatenate([targets, np.zeros_like(targets[:, :1])], 1)
    at_label = np.take_along_axis(fast - plain, label_index[:, None, :, None], -1)[..., 0]
    emitting = (np.arange(targets.shape[1] + 1)[None, None] < target_lengths[:, None, None]) & (
        np.arange(logits.shape[1])[None, :, None] < logit_lengths[:, None, None]
    )
    assert np.all(at_label[emitting] < 0)
    assert np.all(at_label[~emitting] == 0)
    assert np.all((fast - plain)[..., -1][emitting] > 0)


# --------------------------------------------------------------------------------------------------
# Long inputs, dtypes, transformations
# --------------------------------------------------------------------------------------------------


def test_long_input_stays_finite_and_exact_float32():
    rng = np.random.default_rng(6)
    frames, labels, vocab = 1000, 200, 5
    logits = (3 * rng.normal(size=(1, frames, labels + 1, vocab))).astype(np.float32)
    targets = rng.integers(0, vocab - 1, size=(1, labels)).astype(np.int32)
    lengths = (np.array([frames], np.int32), np.array([labels], np.int32))
    loss, grad = jax.jit(jax.value_and_grad(rnnt_loss))(logits, targets, *lengths)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(float(loss), reference_costs(logits, targets, *lengths, -1)[0], rtol=1e-4)
    # The occupancies of every frame sum to one: the gradient of each frame's blank-and-label mass is sane.
    assert abs(float(np.asarray(grad, np.float64).sum())) < 1e-2


def test_bfloat16_logits_accumulate_in_float32(small_batch):
    logits = jnp.asarray(small_batch[0]).astype(jnp.bfloat16)
    loss, grad = jax.jit(jax.value_and_grad(rnnt_loss))(logits, *small_batch[1:])
    assert loss.dtype == jnp.float32 and grad.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    expected = jax.jit(rnnt_loss)(logits.astype(jnp.float32), *small_batch[1:])
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)


def test_jit_and_vmap_agree_with_eager(loss_fn, small_batch):
    # Eager, the values are checked; the padding of small_batch's targets holds the blank, which is allowed.
    eager = np.asarray(rnnt_loss(*small_batch, reduction="none"))
    np.testing.assert_array_equal(np.asarray(loss_fn(*small_batch, reduction="none")), eager)
    stacked = [np.stack([x, x]) for x in small_batch]
    stacked[0][1] = stacked[0][1] * 0.5
    per_item = jax.jit(jax.vmap(lambda *a: rnnt_loss(*a, reduction="none")))(*stacked)
    np.testing.assert_allclose(np.asarray(per_item[0]), eager, rtol=1e-6)
    halved = loss_fn(small_batch[0] * 0.5, *small_batch[1:], reduction="none")
    np.testing.assert_allclose(np.asarray(per_item[1]), np.asarray(halved), rtol=1e-6)
    vmapped_grad = jax.jit(jax.vmap(jax.grad(rnnt_loss)))(*stacked)
    expected_grad = jax.grad(lambda x: loss_fn(x, *small_batch[1:]))(small_batch[0])
    np.testing.assert_allclose(np.asarray(vmapped_grad[0]), np.asarray(expected_grad), rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# From encodings
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encodings_case():
    rng = np.random.default_rng(7)
    batch, frames, labels, dim, vocab = 3, 11, 4, 6, 7
    _, targets, logit_lengths, target_lengths = make_batch(rng, batch, frames, labels, vocab, blank=2)
    params = {
        "kernel": rng.normal(size=(dim, vocab)).astype(np.float32),
        "bias": rng.normal(size=(vocab,)).astype(np.float32),
    }
    source = rng.normal(size=(batch, frames, dim)).astype(np.float32)
    target = rng.normal(size=(batch, labels + 1, dim)).astype(np.float32)
    return params, source, target, targets, logit_lengths, target_lengths


def _join(params, source, target):
    return jax.nn.relu(source[:, :, None] + target[:, None]) @ params["kernel"] + params["bias"]


@pytest.mark.parametrize(("clamp", "fastemit_lambda", "chunk_size"), [(-1.0, 0.0, 4), (0.02, 0.3, 5)])
def test_from_encodings_equals_full_joint(encodings_case, clamp, fastemit_lambda, chunk_size):
    params, source, target, targets, logit_lengths, target_lengths = encodings_case
    options = dict(blank=2, clamp=clamp, fastemit_lambda=fastemit_lambda)

    def full(p, s, t):
        return rnnt_loss(_join(p, s, t), targets, logit_lengths, target_lengths, **options)

    def chunked(p, s, t):
        return rnnt_loss_from_encodings(
            s,
            t,
            lambda sc, tc: _join(p, sc, tc),
            targets,
            logit_lengths,
            target_lengths,
            chunk_size=chunk_size,
            **options,
        )

    expected_value, expected_grads = jax.jit(jax.value_and_grad(full, argnums=(0, 1, 2)))(
        params, source, target
    )
    value, grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(params, source, target)
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-5)
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=1e-6)
    # Padded frames of the source get exactly zero gradient.
    source_grad = np.asarray(grads[1])
    for b, frames in enumerate(logit_lengths):
        assert np.all(source_grad[b, frames:] == 0)


def test_from_encodings_vmap_and_flax_style_closure(encodings_case):
    params, source, target, targets, logit_lengths, target_lengths = encodings_case

    def per_example(p, s, t, y, sl, tl):
        joiner = lambda sc, tc: _join(p, sc, tc)  # noqa: E731 - a closure, as a model's join method would be
        return rnnt_loss_from_encodings(
            s[None], t[None], joiner, y[None], sl[None], tl[None], blank=2, chunk_size=3
        )

    batched = jax.vmap(per_example, in_axes=(None, 0, 0, 0, 0, 0))
    costs = jax.jit(batched)(params, source, target, targets, logit_lengths, target_lengths)
    full = jax.jit(rnnt_loss, static_argnames=STATIC)(
        _join(params, source, target), targets, logit_lengths, target_lengths, blank=2, reduction="none"
    )
    np.testing.assert_allclose(np.asarray(costs), np.asarray(full), rtol=1e-5)
    grad = jax.jit(
        jax.grad(lambda p: jnp.mean(batched(p, source, target, targets, logit_lengths, target_lengths)))
    )(params)
    expected = jax.jit(
        jax.grad(
            lambda p: rnnt_loss(_join(p, source, target), targets, logit_lengths, target_lengths, blank=2)
        )
    )(params)
    np.testing.assert_allclose(
        np.asarray(grad["kernel"]), np.asarray(expected["kernel"]), rtol=1e-4, atol=1e-6
    )


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def _good():
    logits = np.zeros((2, 3, 3, 4), np.float32)
    return logits, np.ones((2, 2), np.int32), np.array([3, 2], np.int32), np.array([2, 1], np.int32)


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda a: {**a, "logits": a["logits"][0]}, ValueError, r"logits: expected 4 dimensions"),
        (
            lambda a: {**a, "logits": a["logits"].astype(np.int32)},
            TypeError,
            r"logits: expected a floating dtype",
        ),
        (
            lambda a: {**a, "targets": a["targets"][:, :1]},
            ValueError,
            r"targets: expected shape \(B, U\) = \(2, 2\)",
        ),
        (
            lambda a: {**a, "targets": a["targets"].astype(np.float32)},
            TypeError,
            r"targets: expected an integer",
        ),
        (
            lambda a: {**a, "logit_lengths": np.array([3, 4])},
            ValueError,
            r"logit_lengths: expected values in \[1, 3\]",
        ),
        (
            lambda a: {**a, "logit_lengths": np.array([3])},
            ValueError,
            r"logit_lengths: expected shape \(B,\) = \(2,\)",
        ),
        (
            lambda a: {**a, "target_lengths": np.array([3, 1])},
            ValueError,
            r"target_lengths: expected values in \[0, 2\]",
        ),
        (
            lambda a: {**a, "targets": np.array([[1, 3], [1, 0]])},
            ValueError,
            r"targets: expected no blank label \(3\)",
        ),
        (
            lambda a: {**a, "targets": np.array([[1, 7], [1, 0]])},
            ValueError,
            r"targets: expected values in \[0, 4\)",
        ),
        (lambda a: {**a, "reduction": "avg"}, ValueError, r"reduction: expected one of"),
        (lambda a: {**a, "blank": 4}, ValueError, r"blank: expected a value in \[-4, 4\), got 4"),
        (lambda a: {**a, "blank": 1.0}, TypeError, r"blank: expected a Python int"),
        (lambda a: {**a, "fastemit_lambda": -0.1}, ValueError, r"fastemit_lambda: expected a value >= 0"),
    ],
)
def test_bad_input_is_rejected_clearly(change, error, match):
    logits, targets, logit_lengths, target_lengths = _good()
    args = dict(logits=logits, targets=targets, logit_lengths=logit_lengths, target_lengths=target_lengths)
    with pytest.raises(error, match=match):
        rnnt_loss(**change(args))


def test_from_encodings_bfloat16(encodings_case):
    params, source, target, targets, logit_lengths, target_lengths = encodings_case

    def chunked(p, s, t):
        joiner = lambda sc, tc: _join(p, sc, tc)  # noqa: E731
        return rnnt_loss_from_encodings(s, t, joiner, targets, logit_lengths, target_lengths, blank=2)

    as_bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), (params, source, target))
    loss, grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2)))(*as_bf16)
    assert loss.dtype == jnp.float32
    assert all(
        g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
        for g in jax.tree.leaves(grads)
    )
    expected = jax.jit(chunked)(*jax.tree.map(lambda x: x.astype(jnp.float32), as_bf16))
    np.testing.assert_allclose(float(loss), float(expected), rtol=2e-2)


def test_from_encodings_bad_input(encodings_case):
    params, source, target, targets, logit_lengths, target_lengths = encodings_case
    joiner = lambda s, t: _join(params, s, t)  # noqa: E731
    with pytest.raises(ValueError, match=r"target_encodings: expected batch size 3"):
        rnnt_loss_from_encodings(source, target[:2], joiner, targets, logit_lengths, target_lengths)
    with pytest.raises(ValueError, match=r"joiner: expected floating logits of shape"):
        rnnt_loss_from_encodings(source, target, lambda s, t: s, targets, logit_lengths, target_lengths)
    with pytest.raises(ValueError, match=r"source_lengths: expected values in \[1, 11\]"):
        rnnt_loss_from_encodings(source, target, joiner, targets, logit_lengths + 20, target_lengths)
    with pytest.raises(ValueError, match=r"chunk_size: expected an int >= 1"):
        rnnt_loss_from_encodings(source, target, joiner, targets, logit_lengths, target_lengths, chunk_size=0)
