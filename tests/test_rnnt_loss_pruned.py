"""Pruned RNN-T loss: the simple loss against ``rnnt_loss`` on the materialised additive joint and against a
direct implementation of k2's smoothed definition; the ranges' invariants (with a hypothesis test); the
pruned loss with full windows against ``rnnt_loss`` on the full joint (float32 and float64); gradients against
finite differences, zero outside the valid region, padding, U = 0, jit/vmap, bfloat16; the transducer's
projections and their conversion; bad input.
"""

from __future__ import annotations

import warnings

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from hypothesis import given, settings

from streamformer import (
    pruned_joiner_fn,
    pruned_rnnt_loss,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_prune_ranges,
    with_simple_loss_projections,
)
from streamformer.convert import from_torchaudio, to_torchaudio
from streamformer.transducer import RNNT, emformer_rnnt_model, joiner_fn
from tests.rnnt_cases import TINY_RNNT

# --------------------------------------------------------------------------------------------------
# Cases and references
# --------------------------------------------------------------------------------------------------


def make_case(seed, batch=3, frames=7, labels=4, vocab=6, dim=5, blank=-1, dtype=np.float32, junk=True):
    """Simple-loss logits, joiner weights and encodings, lengths (incl. a zero-length target), junk padding."""
    rng = np.random.default_rng(seed)
    blank = blank % vocab
    non_blank = np.array([v for v in range(vocab) if v != blank])
    targets = non_blank[rng.integers(0, len(non_blank), size=(batch, labels))].astype(np.int32)
    frame_lengths = np.array([frames] + list(rng.integers(max(labels // 2, 1), frames + 1, size=batch - 1)))
    target_lengths = np.array([labels] + list(rng.integers(0, labels + 1, size=batch - 1)))
    target_lengths[-1] = 0
    frame_lengths, target_lengths = frame_lengths.astype(np.int32), target_lengths.astype(np.int32)
    am = rng.normal(size=(batch, frames, vocab)).astype(dtype)
    lm = rng.normal(size=(batch, labels + 1, vocab)).astype(dtype)
    params = {
        "kernel": rng.normal(size=(dim, vocab)).astype(dtype),
        "bias": rng.normal(size=(vocab,)).astype(dtype),
    }
    source = rng.normal(size=(batch, frames, dim)).astype(dtype)
    target = rng.normal(size=(batch, labels + 1, dim)).astype(dtype)
    if junk:
        for b in range(batch):
            am[b, frame_lengths[b] :] = 1e4
            source[b, frame_lengths[b] :] = 1e4
            lm[b, target_lengths[b] + 1 :] = -1e4
            target[b, target_lengths[b] + 1 :] = 1e4
            targets[b, target_lengths[b] :] = blank
    return dict(
        am=am,
        lm=lm,
        params=params,
        source=source,
        target=target,
        targets=targets,
        frame_lengths=frame_lengths,
        target_lengths=target_lengths,
    )


def full_join(params, source, target):
    return jax.nn.relu(source[:, :, None] + target[:, None]) @ params["kernel"] + params["bias"]


def pruned_join(params, source, pruned_target):
    return jax.nn.relu(source[:, :, None] + pruned_target) @ params["kernel"] + params["bias"]


def full_windows(case, size=None):
    batch, frames = case["source"].shape[:2]
    size = size or case["target"].shape[1]
    return jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32), (batch, frames, size))


def smoothed_reference(am, lm, targets, frame_lengths, target_lengths, lm_scale, am_scale, blank=-1):
    """k2's smoothed simple loss written out on the materialised joint (per-sequence costs, differentiable)."""
    nodes = lm.shape[1]
    combined = jax.nn.log_softmax(am[:, :, None] + lm[:, None], axis=-1)  # (B, T, U1, V)
    lm_only = jax.nn.log_softmax(lm, axis=-1)[:, None]  # (B, 1, U1, V)
    valid = (np.arange(nodes)[None, :] <= target_lengths[:, None]).astype(np.float64)[..., None]
    unigram = jnp.sum(jax.nn.softmax(lm, axis=-1) * valid, axis=(0, 1)) / valid.sum()
    unigram = unigram + jnp.finfo(am.dtype).tiny
    am_only = jax.nn.log_softmax(am + jnp.log(unigram), axis=-1)[:, :, None]  # (B, T, 1, V)
    log_probs = (1 - lm_scale - am_scale) * combined + lm_scale * lm_only + am_scale * am_only
    return rnnt_loss(
        log_probs,
        targets,
        frame_lengths,
        target_lengths,
        blank=blank,
        reduction="none",
        fused_log_softmax=False,
    )


def valid_masks(case):
    frames, nodes = case["am"].shape[1], case["lm"].shape[1]
    frame_valid = np.arange(frames)[None, :] < case["frame_lengths"][:, None]
    node_valid = np.arange(nodes)[None, :] <= case["target_lengths"][:, None]
    return frame_valid, node_valid


@pytest.fixture(scope="module")
def case():
    return make_case(0)


@pytest.fixture(scope="module")
def simple_fn():
    return jax.jit(
        rnnt_loss_simple,
        static_argnames=("blank", "reduction", "lm_only_scale", "am_only_scale", "return_grad"),
    )


# --------------------------------------------------------------------------------------------------
# Simple loss
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("blank", [-1, 0])
def test_simple_equals_rnnt_loss_on_the_materialised_joint(blank):
    case = make_case(1, blank=blank)
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])

    def full(am, lm):
        return rnnt_loss(am[:, :, None] + lm[:, None], *args, blank=blank, reduction="sum")

    def simple(am, lm):
        return rnnt_loss_simple(am, lm, *args, blank=blank, reduction="sum")

    expected, expected_grads = jax.jit(jax.value_and_grad(full, (0, 1)))(case["am"], case["lm"])
    value, grads = jax.jit(jax.value_and_grad(simple, (0, 1)))(case["am"], case["lm"])
    assert value.dtype == jnp.float32
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-6)
    # Gradients exactly zero on padded frames and label positions, junk (1e4) there notwithstanding.
    frame_valid, node_valid = valid_masks(case)
    assert np.all(np.asarray(grads[0])[~frame_valid] == 0) and np.all(np.asarray(grads[1])[~node_valid] == 0)
    assert np.all(np.abs(np.asarray(grads[0])[frame_valid]).sum(-1) > 0)


@pytest.mark.parametrize(("lm_scale", "am_scale"), [(0.25, 0.0), (0.2, 0.15)])
def test_simple_smoothed_equals_the_definition_float64(lm_scale, am_scale):
    with jax.enable_x64(True):
        case = make_case(2, dtype=np.float64)
        args = (case["targets"], case["frame_lengths"], case["target_lengths"])

        def reference(am, lm):
            return jnp.sum(smoothed_reference(am, lm, *args, lm_scale, am_scale))

        def simple(am, lm):
            return rnnt_loss_simple(
                am, lm, *args, reduction="sum", lm_only_scale=lm_scale, am_only_scale=am_scale
            )

        # The reference has no padding rule of its own: give it clean padding (its unigram masks it already).
        frame_valid, node_valid = valid_masks(case)
        am = np.where(frame_valid[..., None], case["am"], 0.0)
        lm = np.where(node_valid[..., None], case["lm"], 0.0)
        expected, expected_grads = jax.jit(jax.value_and_grad(reference, (0, 1)))(am, lm)
        value, grads = jax.jit(jax.value_and_grad(simple, (0, 1)))(case["am"], case["lm"])
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(float(value), float(expected), rtol=1e-10)
        for got, want in zip(grads, expected_grads):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-8, atol=1e-12)
        # Smoothing changes the loss (the scales are not ignored).
        unsmoothed = rnnt_loss_simple(case["am"], case["lm"], *args, reduction="sum")
        assert abs(float(value) - float(unsmoothed)) > 1e-3


def test_simple_gradient_finite_differences_float64():
    with jax.enable_x64(True):
        case = make_case(3, dtype=np.float64)
        args = (case["targets"], case["frame_lengths"], case["target_lengths"])

        @jax.jit
        def loss(am, lm):
            return rnnt_loss_simple(am, lm, *args, reduction="sum", lm_only_scale=0.25, am_only_scale=0.1)

        grads = jax.grad(loss, (0, 1))(case["am"], case["lm"])
        rng = np.random.default_rng(0)
        eps = 1e-6
        for which, (b, i) in [(0, (0, 2)), (0, (1, 0)), (1, (0, 1)), (1, (0, 4)), (1, (1, 0))]:
            v = int(rng.integers(0, case["am"].shape[-1]))
            step = np.zeros_like(case["am"] if which == 0 else case["lm"])
            step[b, i, v] = eps
            plus = [case["am"], case["lm"]]
            minus = [case["am"], case["lm"]]
            plus[which] = plus[which] + step
            minus[which] = minus[which] - step
            numeric = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            np.testing.assert_allclose(float(grads[which][b, i, v]), numeric, rtol=1e-5, atol=1e-8)


def test_simple_occupations_are_the_lattice_posteriors(simple_fn, case):
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    loss, (label_occ, blank_occ) = simple_fn(
        case["am"], case["lm"], *args, reduction="none", return_grad=True
    )
    np.testing.assert_array_equal(
        np.asarray(loss), np.asarray(simple_fn(case["am"], case["lm"], *args, reduction="none"))
    )
    label_occ, blank_occ = np.asarray(label_occ), np.asarray(blank_occ)
    assert label_occ.shape == blank_occ.shape == (3, 7, 5)
    for b in range(3):
        frames, labels = case["frame_lengths"][b], case["target_lengths"][b]
        # Every alignment takes one blank per frame and one arc per label: the posteriors sum to that.
        np.testing.assert_allclose(blank_occ[b].sum(1)[:frames], 1.0, rtol=1e-5)
        np.testing.assert_allclose(label_occ[b].sum(0)[:labels], 1.0, rtol=1e-5)
        assert np.all(blank_occ[b, frames:] == 0) and np.all(label_occ[b, :, labels:] == 0)


# --------------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------------


def check_ranges(ranges, frame_lengths, target_lengths, size):
    ranges = np.asarray(ranges)
    assert ranges.dtype == np.int32 and ranges.shape[2] == size
    np.testing.assert_array_equal(ranges, ranges[..., :1] + np.arange(size))
    start = ranges[..., 0]
    for b in range(len(start)):
        last = max(int(target_lengths[b]) - size + 1, 0)
        assert start[b, 0] == 0
        assert np.all((start[b] >= 0) & (start[b] <= last))
        steps = np.diff(start[b])
        assert np.all(steps >= 0) and np.all(steps <= size - 1)
        assert np.all(start[b, frame_lengths[b] - 1 :] == last)  # the last valid frame reaches the last label


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_ranges_are_valid(simple_fn, size):
    case = make_case(4, batch=4, frames=9, labels=6)
    lengths = (case["frame_lengths"], case["target_lengths"])
    if size == 1:
        lengths = (case["frame_lengths"], np.zeros_like(case["target_lengths"]))
    _, occupations = simple_fn(case["am"], case["lm"], case["targets"], *lengths, return_grad=True)
    ranges = rnnt_prune_ranges(*occupations, *lengths, size)
    check_ranges(ranges, *lengths, size)


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_ranges_hypothesis(data):
    """Random lattices and lengths: the ranges' invariants hold, the pruned lattice keeps a complete path
    (finite loss) and never more probability than the full one (pruned cost >= full cost)."""
    size = data.draw(st.integers(2, 4), label="prune_range")
    batch, frames, labels = 3, 6, 5
    frame_lengths = np.array(
        data.draw(st.lists(st.integers(2, frames), min_size=batch, max_size=batch)), np.int32
    )
    target_lengths = np.array(
        [data.draw(st.integers(0, min(labels, (size - 1) * int(t)))) for t in frame_lengths], np.int32
    )
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    scale = data.draw(st.sampled_from([0.5, 3.0]), label="logit scale")
    rng = np.random.default_rng(seed)
    am = (scale * rng.normal(size=(batch, frames, 6))).astype(np.float32)
    lm = (scale * rng.normal(size=(batch, labels + 1, 6))).astype(np.float32)
    targets = rng.integers(0, 5, size=(batch, labels)).astype(np.int32)
    loss, occupations = _jit_simple_grad(am, lm, targets, frame_lengths, target_lengths)
    ranges = _jit_ranges(*occupations, frame_lengths, target_lengths, size)
    check_ranges(ranges, frame_lengths, target_lengths, size)
    # The additive joiner pruned to the ranges: finite, and at least the full loss.
    pruned = _jit_additive_pruned(am, lm, ranges, targets, frame_lengths, target_lengths)
    assert np.all(np.isfinite(np.asarray(pruned)))
    assert np.all(np.asarray(pruned) >= np.asarray(loss) - 1e-4 * np.abs(np.asarray(loss)))


@jax.jit
def _jit_simple_grad(am, lm, targets, frame_lengths, target_lengths):
    return rnnt_loss_simple(
        am, lm, targets, frame_lengths, target_lengths, reduction="none", return_grad=True
    )


_jit_ranges = jax.jit(rnnt_prune_ranges, static_argnums=4)


@jax.jit
def _jit_additive_pruned(am, lm, ranges, targets, frame_lengths, target_lengths):
    # The additive joiner as a pruned joiner: source = am, target = lm, logits = am[t] + lm[s].
    return rnnt_loss_pruned(
        am,
        lm,
        lambda s, t: s[:, :, None] + t,
        ranges,
        targets,
        frame_lengths,
        target_lengths,
        reduction="none",
    )


def test_ranges_hold_a_peaked_alignment(simple_fn):
    """A lattice dominated by one alignment: the ranges contain that alignment's nodes on every frame."""
    rng = np.random.default_rng(5)
    frames, labels, vocab, size = 20, 8, 10, 3
    targets = rng.integers(0, vocab - 1, size=(1, labels)).astype(np.int32)
    # The alignment: label u emitted on frame emit[u]; am favours the frame's label, lm is flat.
    emit = np.sort(rng.choice(frames, size=labels, replace=False))
    am = np.zeros((1, frames, vocab), np.float32)
    am[0, :, vocab - 1] = 8.0
    for u, t in enumerate(emit):
        am[0, t, targets[0, u]] = 16.0
    lm = np.zeros((1, labels + 1, vocab), np.float32)
    lengths = (np.array([frames], np.int32), np.array([labels], np.int32))
    _, occupations = simple_fn(am, lm, targets, *lengths, return_grad=True)
    ranges = np.asarray(rnnt_prune_ranges(*occupations, *lengths, size))
    # Nodes visited on frame t: from the labels emitted before t to those emitted up to t.
    for t in range(frames):
        low, high = int(np.sum(emit < t)), int(np.sum(emit <= t))
        assert ranges[0, t, 0] <= low and high <= ranges[0, t, -1], (t, low, high, ranges[0, t])


# --------------------------------------------------------------------------------------------------
# Pruned loss
# --------------------------------------------------------------------------------------------------


def _pruned_vs_full(case, size, dtype_rtol, atol, chunk_size=64):
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    windows = full_windows(case, size)

    def full(p, s, t):
        return rnnt_loss(full_join(p, s, t), *args, reduction="sum")

    def pruned(p, s, t):
        joiner = lambda src, tgt: pruned_join(p, src, tgt)  # noqa: E731
        return rnnt_loss_pruned(s, t, joiner, windows, *args, reduction="sum", chunk_size=chunk_size)

    inputs = (case["params"], case["source"], case["target"])
    expected, expected_grads = jax.jit(jax.value_and_grad(full, (0, 1, 2)))(*inputs)
    value, grads = jax.jit(jax.value_and_grad(pruned, (0, 1, 2)))(*inputs)
    np.testing.assert_allclose(float(value), float(expected), rtol=dtype_rtol)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=dtype_rtol, atol=atol)
    return value, grads


@pytest.mark.parametrize(("extra", "chunk_size"), [(0, 64), (2, 3)])
def test_pruned_with_full_windows_equals_full_joint_float32(case, extra, chunk_size):
    # Junk (1e4) in every padded frame and label position: the full path masks it, so must the pruned one.
    clean = {**case, "source": case["source"].copy(), "target": case["target"].copy()}
    frame_valid, node_valid = valid_masks(case)
    clean["source"][~frame_valid] = 0.0
    clean["target"][~node_valid] = 0.0
    _, grads = _pruned_vs_full(clean, case["target"].shape[1] + extra, 1e-4, 1e-5, chunk_size)
    # Junk padding changes nothing, and gets exactly zero gradient.
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    windows = full_windows(case, case["target"].shape[1] + extra)

    def pruned(p, s, t):
        return rnnt_loss_pruned(s, t, lambda a, b: pruned_join(p, a, b), windows, *args, reduction="sum")

    junk_value, junk_grads = jax.jit(jax.value_and_grad(pruned, (0, 1, 2)))(
        case["params"], case["source"], case["target"]
    )
    clean_value = jax.jit(pruned)(clean["params"], clean["source"], clean["target"])
    assert float(junk_value) == float(clean_value)
    for got, want in zip(jax.tree.leaves(junk_grads[0]), jax.tree.leaves(grads[0])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(junk_grads[1])[~frame_valid] == 0)
    assert np.all(np.asarray(junk_grads[2])[~node_valid] == 0)
    assert np.all(np.isfinite(np.asarray(junk_grads[1]))) and np.all(np.isfinite(np.asarray(junk_grads[2])))


def test_pruned_with_full_windows_equals_full_joint_float64():
    with jax.enable_x64(True):
        case = make_case(6, dtype=np.float64, junk=False)
        value, _ = _pruned_vs_full(case, case["target"].shape[1], 1e-6, 1e-9)
        assert value.dtype == jnp.float64


def test_pruned_gradient_finite_differences_float64():
    with jax.enable_x64(True):
        case = make_case(7, dtype=np.float64, junk=False)
        args = (case["targets"], case["frame_lengths"], case["target_lengths"])
        _, occupations = rnnt_loss_simple(case["am"], case["lm"], *args, return_grad=True)
        ranges = rnnt_prune_ranges(*occupations, case["frame_lengths"], case["target_lengths"], 2)

        @jax.jit
        def loss(kernel, source):
            p = {**case["params"], "kernel": kernel}
            return rnnt_loss_pruned(source, case["target"], lambda s, t: pruned_join(p, s, t), ranges, *args)

        grads = jax.grad(loss, (0, 1))(case["params"]["kernel"], case["source"])
        eps = 1e-6
        for which, index in [(0, (1, 2)), (0, (4, 0)), (1, (0, 3, 1)), (1, (1, 0, 4))]:
            inputs = [case["params"]["kernel"], case["source"]]
            step = np.zeros_like(inputs[which])
            step[index] = eps
            plus, minus = list(inputs), list(inputs)
            plus[which] = plus[which] + step
            minus[which] = minus[which] - step
            numeric = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
            np.testing.assert_allclose(float(grads[which][index]), numeric, rtol=1e-5, atol=1e-9)


def test_pruned_equals_autodiff_of_a_plain_reference(case):
    """Narrow windows: against the full joint with every node outside the windows given probability 0."""
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    _, occupations = rnnt_loss_simple(case["am"], case["lm"], *args, return_grad=True)
    ranges = rnnt_prune_ranges(*occupations, case["frame_lengths"], case["target_lengths"], 2)
    start = np.asarray(ranges)[..., 0]
    nodes = case["target"].shape[1]
    inside = (np.arange(nodes)[None, None] >= start[..., None]) & (
        np.arange(nodes)[None, None] < start[..., None] + 2
    )
    frame_valid, node_valid = valid_masks(case)
    source = np.where(frame_valid[..., None], case["source"], 0.0)
    target = np.where(node_valid[..., None], case["target"], 0.0)

    def reference(p, s, t):
        log_probs = jax.nn.log_softmax(full_join(p, s, t), axis=-1)
        # Outside the windows both arcs have log-probability -inf (a large negative number keeps autodiff finite).
        log_probs = jnp.where(inside[..., None], log_probs, -1e30)
        return rnnt_loss(log_probs, *args, reduction="sum", fused_log_softmax=False)

    def pruned(p, s, t):
        return rnnt_loss_pruned(
            s, t, lambda a, b: pruned_join(p, a, b), ranges, *args, reduction="sum", chunk_size=2
        )

    expected, expected_grads = jax.jit(jax.value_and_grad(reference, (0, 1, 2)))(
        case["params"], source, target
    )
    value, grads = jax.jit(jax.value_and_grad(pruned, (0, 1, 2)))(
        case["params"], case["source"], case["target"]
    )
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    # Narrow windows drop probability: the pruned loss is larger than the full one.
    full = float(rnnt_loss(full_join(case["params"], source, target), *args, reduction="sum"))
    assert float(value) > full


def test_target_length_zero_everywhere():
    rng = np.random.default_rng(8)
    batch, frames, dim, vocab = 2, 5, 3, 4
    params = {"kernel": rng.normal(size=(dim, vocab)).astype(np.float32), "bias": np.zeros(vocab, np.float32)}
    source = rng.normal(size=(batch, frames, dim)).astype(np.float32)
    target = rng.normal(size=(batch, 1, dim)).astype(np.float32)
    am = rng.normal(size=(batch, frames, vocab)).astype(np.float32)
    lm = rng.normal(size=(batch, 1, vocab)).astype(np.float32)
    args = (np.zeros((batch, 0), np.int32), np.array([5, 3], np.int32), np.zeros(batch, np.int32))
    simple, pruned = pruned_rnnt_loss(
        source,
        target,
        lambda s, t: pruned_join(params, s, t),
        am,
        lm,
        *args,
        prune_range=3,
        reduction="none",
        lm_only_scale=0.0,
    )
    expected = rnnt_loss(full_join(params, source, target), *args, reduction="none")
    np.testing.assert_allclose(np.asarray(pruned), np.asarray(expected), rtol=1e-5)
    expected_simple = rnnt_loss(am[:, :, None] + lm[:, None], *args, reduction="none")
    np.testing.assert_allclose(np.asarray(simple), np.asarray(expected_simple), rtol=1e-5)


def test_convenience_jit_vmap_and_full_range(case):
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    nodes = case["target"].shape[1]

    def both(p, s, t, am, lm, y, sl, tl, size):
        return pruned_rnnt_loss(
            s, t, lambda a, b: pruned_join(p, a, b), am, lm, y, sl, tl, prune_range=size, reduction="none"
        )

    inputs = (case["params"], case["source"], case["target"], case["am"], case["lm"], *args)
    simple, pruned = jax.jit(both, static_argnums=8)(*inputs, nodes)
    np.testing.assert_allclose(
        np.asarray(simple),
        np.asarray(rnnt_loss_simple(case["am"], case["lm"], *args, reduction="none", lm_only_scale=0.25)),
        rtol=1e-6,
    )
    full = rnnt_loss(full_join(case["params"], case["source"], case["target"]), *args, reduction="none")
    np.testing.assert_allclose(np.asarray(pruned), np.asarray(full), rtol=1e-5)
    # vmap over a leading axis of two copies of the batch, the second with halved simple logits.
    stacked = [jnp.stack([x, x]) for x in inputs[1:]]
    stacked[2] = stacked[2].at[1].multiply(0.5)
    per = jax.jit(jax.vmap(lambda *a: both(case["params"], *a, 3)))(*stacked)
    eager0 = both(*inputs, 3)
    eager1 = both(case["params"], case["source"], case["target"], case["am"] * 0.5, case["lm"], *args, 3)
    for i, eager in enumerate((eager0, eager1)):
        for got, want in zip(per, eager):
            np.testing.assert_allclose(np.asarray(got[i]), np.asarray(want), rtol=1e-5)


def test_bfloat16_inputs_accumulate_in_float32(case):
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])

    def both(p, s, t, am, lm):
        simple, pruned = pruned_rnnt_loss(
            s, t, lambda a, b: pruned_join(p, a, b), am, lm, *args, prune_range=3
        )
        return simple + pruned

    inputs = (case["params"], case["source"], case["target"], case["am"], case["lm"])
    as_bf16 = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), inputs)
    value, grads = jax.jit(jax.value_and_grad(both, (0, 1, 2, 3, 4)))(*as_bf16)
    assert value.dtype == jnp.float32
    for g in jax.tree.leaves(grads):
        assert g.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(g, np.float32)))
    expected = jax.jit(both)(*jax.tree.map(lambda x: x.astype(jnp.float32), as_bf16))
    np.testing.assert_allclose(float(value), float(expected), rtol=2e-2)


# --------------------------------------------------------------------------------------------------
# The transducer's projections, the pruned joiner, conversion
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    model = with_simple_loss_projections(emformer_rnnt_model(**TINY_RNNT))
    variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    return model, variables


def test_projections_and_pruned_joiner(tiny_model):
    model, variables = tiny_model
    params = variables["params"]
    dim, vocab = TINY_RNNT["encoding_dim"], TINY_RNNT["num_symbols"]
    assert params["simple_loss"]["am_proj"]["kernel"].shape == (dim, vocab)
    assert params["simple_loss"]["lm_proj"]["kernel"].shape == (dim, vocab)
    rng = np.random.default_rng(9)
    source = rng.normal(size=(2, 5, dim)).astype(np.float32)
    target = rng.normal(size=(2, 4, dim)).astype(np.float32)
    am, lm = model.apply(variables, source, target, method=RNNT.simple_logits)
    assert am.shape == (2, 5, vocab) and lm.shape == (2, 4, vocab)
    # The pruned joiner at gathered positions equals the full joiner there.
    positions = np.array([[[0, 1], [1, 2], [1, 2], [2, 3], [2, 3]]] * 2)
    gathered = np.take_along_axis(target[:, None], positions[..., None], axis=2)
    pruned = pruned_joiner_fn(model, variables)(source, gathered)
    full = joiner_fn(model, variables)(source, target)
    np.testing.assert_allclose(
        np.asarray(pruned),
        np.take_along_axis(np.asarray(full), positions[..., None], axis=2),
        rtol=1e-5,
        atol=1e-6,
    )
    # Without the projections the method says what to do.
    plain = emformer_rnnt_model(**TINY_RNNT)
    plain_shapes = jax.eval_shape(plain.init, jax.random.key(0), *plain.example_inputs())
    assert set(plain_shapes["params"]) == set(params) - {"simple_loss"}
    plain_variables = {"params": {k: v for k, v in params.items() if k != "simple_loss"}}
    with pytest.raises(ValueError, match="with_simple_loss_projections"):
        plain.apply(plain_variables, source, target, method=RNNT.simple_logits)


def test_conversion_leaves_projections_out_and_initialises_them(tiny_model, torchaudio_ref):
    model, variables = tiny_model
    state_dict = to_torchaudio(model, variables)
    assert not any(key.startswith("simple_loss") for key in state_dict)
    reference = torchaudio_ref.models.emformer_rnnt_model(**TINY_RNNT)
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    with pytest.warns(UserWarning, match=r"torchaudio has no simple_loss\.am_proj, simple_loss\.lm_proj"):
        back = from_torchaudio(model, state_dict)
    flat, original = (
        traverse_util.flatten_dict(back["params"]),
        traverse_util.flatten_dict(variables["params"]),
    )
    assert set(flat) == set(original)
    for path, value in flat.items():
        if path[0] != "simple_loss":
            np.testing.assert_array_equal(np.asarray(value), np.asarray(original[path]))
    # The plain model converts without a warning.
    plain = emformer_rnnt_model(**TINY_RNNT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_torchaudio(plain, state_dict)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------


def test_bad_input_is_rejected_clearly(case):
    args = (case["targets"], case["frame_lengths"], case["target_lengths"])
    joiner = lambda s, t: pruned_join(case["params"], s, t)  # noqa: E731
    src, tgt, am, lm = case["source"], case["target"], case["am"], case["lm"]
    with pytest.raises(ValueError, match=r"prune_range: expected an int >= 1, got 0"):
        pruned_rnnt_loss(src, tgt, joiner, am, lm, *args, prune_range=0)
    with pytest.raises(ValueError, match=r"prune_range: expected an int >= 1"):
        rnnt_prune_ranges(am, am, *args[1:], 0)
    with pytest.raises(ValueError, match=r"lm_logits: expected shape \(B, U \+ 1, V\) with B = 3 and V = 6"):
        rnnt_loss_simple(am, lm[..., :5], *args)
    with pytest.raises(ValueError, match=r"expected the joiner's vocabulary size V = 6, got 7"):
        pruned_rnnt_loss(
            src,
            tgt,
            joiner,
            np.pad(am, [(0, 0), (0, 0), (0, 1)]),
            np.pad(lm, [(0, 0), (0, 0), (0, 1)]),
            *args,
        )
    with pytest.raises(ValueError, match=r"am_logits: expected \(B, T\) = \(3, 7\) as source_encodings"):
        pruned_rnnt_loss(src, tgt, joiner, am[:, :5], lm, *args)
    with pytest.raises(ValueError, match=r"lm_logits: expected \(B, U \+ 1\) = \(3, 5\) as target_encodings"):
        pruned_rnnt_loss(src, tgt, joiner, am, lm[:, :4], *args)
    with pytest.raises(ValueError, match=r"logit_lengths: expected values in \[1, 7\]"):
        rnnt_loss_simple(am, lm, args[0], args[1] + 5, args[2])
    with pytest.raises(ValueError, match=r"target_lengths: expected shape \(B,\) = \(3,\)"):
        rnnt_loss_simple(am, lm, args[0], args[1], args[2][:2])
    with pytest.raises(ValueError, match=r"targets: expected shape \(B, U\) = \(3, 4\)"):
        rnnt_loss_simple(am, lm, args[0][:, :3], *args[1:])
    with pytest.raises(ValueError, match=r"lm_only_scale, am_only_scale: expected a sum of at most 1"):
        rnnt_loss_simple(am, lm, *args, lm_only_scale=0.6, am_only_scale=0.5)
    with pytest.raises(ValueError, match=r"am_only_scale: expected a value in \[0, 1\]"):
        rnnt_loss_simple(am, lm, *args, am_only_scale=-0.1)
    with pytest.raises(ValueError, match=r"blank_occupancy: expected shape \(B, T, U \+ 1\)"):
        rnnt_prune_ranges(np.zeros((3, 7, 5), np.float32), np.zeros((3, 7, 4), np.float32), *args[1:], 2)
    with pytest.raises(
        ValueError, match=r"prune_range: expected \(prune_range - 1\) \* source_lengths >= target_lengths"
    ):
        occupancy = np.zeros((1, 3, 7), np.float32)
        rnnt_prune_ranges(occupancy, occupancy, np.array([3], np.int32), np.array([6], np.int32), 2)
    windows = full_windows(case, 3)
    with pytest.raises(ValueError, match=r"ranges: expected shape \(B, T, K\)"):
        rnnt_loss_pruned(src, tgt, joiner, windows[:, :4], *args)
    with pytest.raises(ValueError, match=r"ranges: expected consecutive label positions"):
        rnnt_loss_pruned(src, tgt, joiner, windows[..., ::-1], *args)
    with pytest.raises(ValueError, match=r"joiner: expected floating logits of shape \(B, T, K, V\)"):
        rnnt_loss_pruned(src, tgt, lambda s, t: full_join(case["params"], s, tgt), windows, *args)
    with pytest.raises(ValueError, match=r"chunk_size: expected an int >= 1, got 0"):
        rnnt_loss_pruned(src, tgt, joiner, windows, *args, chunk_size=0)
    with pytest.raises(ValueError, match=r"source_lengths: expected shape \(B,\) = \(3,\)"):
        rnnt_loss_pruned(src, tgt, joiner, windows, args[0], args[1][:1], args[2])
