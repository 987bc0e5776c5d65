"""The first two steps of the pruned RNN-T loss (Kuang et al. 2022): the simple loss and the pruning ranges.

1. :func:`rnnt_loss_simple`: the RNN-T loss of a trivial joiner whose logits at lattice node (t, u) are
   ``am_logits[t] + lm_logits[u]``, log-softmaxed over V. The (B, T, U + 1, V) joint is never formed: the
   softmax normalisers are one batched matmul of exponentials, ``log(exp(am - am_max) @ exp(lm - lm_max).T)
   + am_max + lm_max`` (the maxima make the exponentials safe), and the log-probabilities of blank and of
   the next label are gathered from am and lm separately. Optional smoothing mixes in an LM-only and an
   AM-only lattice as k2's smoothed loss does. With ``return_grad=True`` it also returns the arc occupation
   probabilities (the gradient of minus the summed per-sequence losses with respect to the lattice's arc
   log-probabilities), which locate the label positions that matter on each frame.
2. :func:`rnnt_prune_ranges`: for each frame, the start of a window of ``prune_range`` consecutive label
   positions, chosen as k2 chooses it: the start maximising the window's blank occupation minus the label
   occupation entering the window from below, then made non-decreasing in t with steps of at most
   ``prune_range - 1`` (no label skipped), the first frame starting at 0 and each sequence's last frame
   ending at its last label.

The third step, the loss over those windows, and the three together are in :mod:`streamformer.losses.pruned`.

Arc layout: everything here is (B, T, U + 1) in the lattice's (frame, label position) order, as in
:mod:`streamformer.losses.lattice`; k2's ``px`` and ``py`` are these transposed (label, then blank).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from . import checks, lattice

__all__ = ["rnnt_loss_simple", "rnnt_prune_ranges"]

Array = Any


def _check_scale(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a Python float, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
    return float(value)


def _check_feasible(prune_range: int, source_lengths: Any, target_lengths: Any) -> None:
    """Windows move at most prune_range - 1 labels a frame: each sequence must reach its last label, i.e.
    ``(prune_range - 1) * source_lengths >= target_lengths``, (B,) each (checked when concrete)."""
    if not (_checks.is_concrete(source_lengths) and _checks.is_concrete(target_lengths)):
        return
    frames, labels = np.asarray(source_lengths), np.asarray(target_lengths)
    bad = np.flatnonzero((prune_range - 1) * frames < labels)
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"prune_range: expected (prune_range - 1) * source_lengths >= target_lengths for every sequence "
            f"(windows move at most prune_range - 1 labels per frame), got prune_range {prune_range} with "
            f"source_lengths[{b}] = {int(frames[b])}, target_lengths[{b}] = {int(labels[b])}"
        )


# --------------------------------------------------------------------------------------------------
# Simple loss
# --------------------------------------------------------------------------------------------------


def _simple_arc_log_probs(am, lm, label_index, frame_lengths, target_lengths, blank, lm_scale, am_scale):
    """am (B, T, V), lm (B, U1, V) in the compute dtype -> blank and label log-probabilities (B, T, U1)."""
    frames, nodes = am.shape[1], lm.shape[1]
    frame_valid = jnp.arange(frames)[None, :] < frame_lengths[:, None]  # (B, T)
    node_valid = jnp.arange(nodes)[None, :] <= target_lengths[:, None]  # (B, U1)
    # Padding may hold anything (inf included): zero it so that it never reaches a valid node or a gradient.
    am = jnp.where(frame_valid[..., None], am, 0.0)
    lm = jnp.where(node_valid[..., None], lm, 0.0)

    am_max = jax.lax.stop_gradient(jnp.max(am, axis=-1, keepdims=True))  # (B, T, 1)
    lm_max = jax.lax.stop_gradient(jnp.max(lm, axis=-1, keepdims=True))  # (B, U1, 1)
    am_exp = jnp.exp(am - am_max)
    lm_exp = jnp.exp(lm - lm_max)
    tiny = jnp.finfo(am.dtype).tiny
    # Full precision: on accelerators the default matmul precision would round the exponentials to bfloat16.
    products = jnp.einsum("btv,buv->btu", am_exp, lm_exp, precision=jax.lax.Precision.HIGHEST)
    normaliser = jnp.log(products + tiny) + am_max + jnp.swapaxes(lm_max, 1, 2)  # (B, T, U1)

    am_blank = am[..., blank][:, :, None]  # (B, T, 1)
    lm_blank = lm[..., blank][:, None, :]  # (B, 1, U1)
    am_label = jnp.take_along_axis(am, jnp.broadcast_to(label_index[:, None, :], normaliser.shape), axis=2)
    lm_label = jnp.take_along_axis(lm, label_index[..., None], axis=2)[..., 0][:, None, :]  # (B, 1, U1)

    combined_scale = 1.0 - lm_scale - am_scale
    blank_lp = combined_scale * (am_blank + lm_blank - normaliser)
    label_lp = combined_scale * (am_label + lm_label - normaliser)
    if lm_scale:
        # LM only: the predictor's logits log-softmaxed by themselves.
        lm_log_norm = jnp.log(jnp.sum(lm_exp, axis=-1)) + lm_max[..., 0]  # (B, U1)
        blank_lp = blank_lp + lm_scale * (lm_blank - lm_log_norm[:, None, :])
        label_lp = label_lp + lm_scale * (lm_label - lm_log_norm[:, None, :])
    if am_scale:
        # AM only: the encoder's logits with a unigram LM, the predictor's softmax averaged over the batch's
        # valid label positions (k2 averages over padding as well; here padding changes nothing).
        lm_probs = lm_exp / jnp.sum(lm_exp, axis=-1, keepdims=True)
        weights = node_valid.astype(am.dtype)[..., None]
        unigram = jnp.sum(lm_probs * weights, axis=(0, 1)) / jnp.sum(weights) + tiny  # (V,)
        am_log_norm = jnp.log(am_exp @ unigram)[..., None] + am_max  # (B, T, 1)
        log_unigram = jnp.log(unigram)
        blank_lp = blank_lp + am_scale * (am_blank + log_unigram[blank] - am_log_norm)
        label_lp = label_lp + am_scale * (am_label + log_unigram[label_index][:, None, :] - am_log_norm)
    return blank_lp, label_lp


def rnnt_loss_simple(
    am_logits: Array,
    lm_logits: Array,
    targets: Array,
    logit_lengths: Array,
    target_lengths: Array,
    *,
    blank: int = -1,
    reduction: str = "mean",
    lm_only_scale: float = 0.0,
    am_only_scale: float = 0.0,
    return_grad: bool = False,
) -> Array | tuple[Array, tuple[Array, Array]]:
    """RNN-T loss of the additive joiner ``logits[t, u] = am_logits[t] + lm_logits[u]``, without the joint.

    Equals ``rnnt_loss(am_logits[:, :, None] + lm_logits[:, None], ...)`` (values and gradients) when both
    smoothing scales are 0, in O(B T (U + 1) + B (T + U) V) memory instead of O(B T U V).

    Smoothing, as k2's ``rnnt_loss_smoothed``: every arc log-probability is
    ``(1 - lm_only_scale - am_only_scale) * combined + lm_only_scale * lm_only + am_only_scale * am_only``,
    where ``lm_only`` log-softmaxes ``lm_logits[u]`` alone and ``am_only`` log-softmaxes
    ``am_logits[t] + log(unigram)``, the unigram being the predictor's softmax averaged over the batch's
    valid label positions (u <= target_lengths[b]).

    Args:
        am_logits: (B, T, V) the encoder's projection to the vocabulary (any float dtype; accumulated in
            float32, float64 for float64 inputs).
        lm_logits: (B, U + 1, V) the predictor's projection to the vocabulary (blank-prefixed targets).
        targets: (B, U) integer labels, none equal to blank within ``target_lengths``.
        logit_lengths: (B,) integer valid frames, in [1, T].
        target_lengths: (B,) integer valid labels, in [0, U].
        blank: blank index; negative counts from the end (-1 is V - 1).
        reduction: "none" ((B,) losses), "mean" or "sum".
        lm_only_scale, am_only_scale: smoothing scales in [0, 1], summing to at most 1.
        return_grad: also return the occupations that :func:`rnnt_prune_ranges` takes.

    Returns:
        The loss (float32, or float64); with ``return_grad`` a pair ``(loss, (label_occupancy,
        blank_occupancy))``, each (B, T, U + 1): the posterior probability of the label arc (t, u) -> (t, u + 1)
        and of the blank arc (t, u) -> (t + 1, u) (the gradient of minus the summed per-sequence losses with
        respect to those arcs' log-probabilities: k2's ``px_grad`` and ``py_grad``, transposed). They carry
        no gradient.
    """
    checks.check_floating("am_logits", am_logits, 3, "(B, T, V)")
    checks.check_floating("lm_logits", lm_logits, 3, "(B, U + 1, V)")
    batch, frames, vocab = am_logits.shape
    if lm_logits.shape[0] != batch or lm_logits.shape[2] != vocab:
        raise ValueError(
            f"lm_logits: expected shape (B, U + 1, V) with B = {batch} and V = {vocab} as am_logits "
            f"{tuple(am_logits.shape)}, got {tuple(lm_logits.shape)}"
        )
    nodes = lm_logits.shape[1]
    if frames < 1 or nodes < 1 or vocab < 2:
        raise ValueError(
            f"am_logits, lm_logits: expected T >= 1, U + 1 >= 1 and V >= 2, got shapes "
            f"{tuple(am_logits.shape)} and {tuple(lm_logits.shape)}"
        )
    targets, logit_lengths, target_lengths = map(checks.as_array, (targets, logit_lengths, target_lengths))
    checks.check_loss_options(blank=blank, reduction=reduction)
    checks.check_targets_and_lengths(
        targets, logit_lengths, target_lengths, (batch, frames, nodes - 1), "logit_lengths"
    )
    lm_scale = _check_scale("lm_only_scale", lm_only_scale)
    am_scale = _check_scale("am_only_scale", am_only_scale)
    if lm_scale + am_scale > 1.0:
        raise ValueError(
            f"lm_only_scale, am_only_scale: expected a sum of at most 1, got {lm_scale} + {am_scale}"
        )
    blank = checks.resolve_blank(blank, vocab)
    checks.check_target_values(targets, target_lengths, vocab, blank)

    dtype = lattice.compute_dtype(jnp.promote_types(am_logits.dtype, lm_logits.dtype))
    logit_lengths = jnp.clip(jnp.asarray(logit_lengths), 1, frames)
    target_lengths = jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1)
    label_index = lattice.label_indices(jnp.asarray(targets), nodes, vocab)
    blank_lp, label_lp = _simple_arc_log_probs(
        jnp.asarray(am_logits).astype(dtype),
        jnp.asarray(lm_logits).astype(dtype),
        label_index,
        logit_lengths,
        target_lengths,
        blank,
        lm_scale,
        am_scale,
    )
    costs, blank_occ, label_occ = lattice.lattice_costs(blank_lp, label_lp, logit_lengths, target_lengths)
    loss = lattice.reduce_costs(costs, reduction)
    if return_grad:
        return loss, (jax.lax.stop_gradient(label_occ), jax.lax.stop_gradient(blank_occ))
    return loss


# --------------------------------------------------------------------------------------------------
# Ranges
# --------------------------------------------------------------------------------------------------


def _reverse_cummin(x: Array) -> Array:
    """out[..., t] = min(x[..., t:])."""
    return jax.lax.cummin(x, axis=x.ndim - 1, reverse=True)


def rnnt_prune_ranges(
    label_occupancy: Array,
    blank_occupancy: Array,
    source_lengths: Array,
    target_lengths: Array,
    prune_range: int,
) -> Array:
    """Per frame, the ``prune_range`` consecutive label positions the pruned loss evaluates (k2's choice).

    For frame t of sequence b the window start s maximises ``sum(blank_occupancy[b, t, s : s + prune_range])
    - label_occupancy[b, t, s - 1]`` (the probability of leaving frame t inside the window minus that of
    entering the window from below on frame t; 0 for s = 0) over s in [0, max(U_b - prune_range + 1, 0)].
    Frames from each sequence's last valid frame on start at ``max(U_b - prune_range + 1, 0)``. The starts are
    then made non-decreasing (each is lowered to the minimum of those after it), and steps larger than
    ``prune_range - 1`` are closed by lowering the starts before them, the first frame starting at 0.

    Args:
        label_occupancy, blank_occupancy: (B, T, U + 1), from ``rnnt_loss_simple(..., return_grad=True)``.
        source_lengths: (B,) integer valid frames, in [1, T].
        target_lengths: (B,) integer valid labels, in [0, U].
        prune_range: window size K >= 1.

    Returns:
        ranges (B, T, K) int32: ``ranges[b, t, k] = start[b, t] + k``, with start non-decreasing in t,
        ``start[b, t + 1] - start[b, t] <= K - 1``, start in [0, max(U_b - K + 1, 0)] and, on every frame from
        the last valid one on, ``start = max(U_b - K + 1, 0)`` when the sequence is feasible
        (``(K - 1) * T_b >= U_b``). No gradient.
    """
    checks.check_positive_int("prune_range", prune_range)
    checks.check_floating("label_occupancy", label_occupancy, 3, "(B, T, U + 1)")
    batch, frames, nodes = label_occupancy.shape
    _checks.array_shape("blank_occupancy", blank_occupancy, (batch, frames, nodes), "(B, T, U + 1)")
    for name, value in (("source_lengths", source_lengths), ("target_lengths", target_lengths)):
        _checks.array_shape(name, value, (batch,), "(B,)")
        _checks.integer_array(name, value)
    _checks.lengths_in_range("source_lengths", source_lengths, 1, frames)
    _checks.lengths_in_range("target_lengths", target_lengths, 0, nodes - 1)
    _check_feasible(prune_range, source_lengths, target_lengths)

    size = int(prune_range)
    blank_occ = jax.lax.stop_gradient(jnp.asarray(blank_occupancy)).astype(jnp.float32)
    label_occ = jax.lax.stop_gradient(jnp.asarray(label_occupancy)).astype(jnp.float32)
    frame_lengths = jnp.clip(jnp.asarray(source_lengths), 1, frames).astype(jnp.int32)
    labels = jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1).astype(jnp.int32)

    num_starts = max(nodes - size + 1, 1)
    # Window sums of the blank occupation through a cumulative sum (windows past U + 1 are cut short).
    cumulative = jnp.concatenate([jnp.zeros_like(blank_occ[..., :1]), jnp.cumsum(blank_occ, axis=-1)], -1)
    starts = jnp.arange(num_starts)
    window = cumulative[..., jnp.minimum(starts + size, nodes)] - cumulative[..., starts]
    entering = jnp.concatenate([jnp.zeros_like(label_occ[..., :1]), label_occ[..., : num_starts - 1]], -1)
    score = window - entering  # (B, T, num_starts)
    last_start = jnp.maximum(labels - size + 1, 0)  # (B,)
    score = jnp.where(starts[None, None, :] <= last_start[:, None, None], score, -jnp.inf)
    start = jnp.argmax(score, axis=-1).astype(jnp.int32)  # (B, T)
    t = jnp.arange(frames, dtype=jnp.int32)[None, :]
    start = jnp.where(t < frame_lengths[:, None] - 1, start, last_start[:, None])

    # Non-decreasing, then steps of at most size - 1 with start[0] = 0: in x = t (size - 1) - start the step
    # bound is "x non-decreasing", start[0] = 0 is x[0] >= 0; lowering x to its reverse running minimum and
    # clipping at 0 keeps start non-decreasing (see the proof in k2's _adjust_pruning_lower_bound).
    start = _reverse_cummin(start)
    slope = t * (size - 1)
    start = slope - jnp.maximum(_reverse_cummin(slope - start), 0)
    return start[..., None] + jnp.arange(size, dtype=jnp.int32)
