"""Pruned RNN-T loss (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training") in JAX.

Three steps, each public, and a convenience that runs them in order (:func:`pruned_rnnt_loss`):

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
3. :func:`rnnt_loss_pruned`: the real joiner evaluated only on the (B, T, prune_range) nodes of the windows,
   and the RNN-T recursion over the lattice restricted to them (every other node has probability 0). As
   ``rnnt_loss_from_encodings`` does for the full lattice, the joiner runs on chunks of frames and its logits
   are recomputed in the backward pass, so that only a chunk of (B, Tc, prune_range, V) logits lives at once.

Arc layout: everything here is (B, T, U + 1) in the lattice's (frame, label position) order, as in
:mod:`streamformer.rnnt_loss`: ``blank[b, t, u]`` is the arc (t, u) -> (t + 1, u) (at the last frame and
label: the final blank), ``label[b, t, u]`` the arc (t, u) -> (t, u + 1) emitting ``targets[b, u]``. k2's
``px`` and ``py`` are these transposed (label, then blank).

Feasibility: a window moves by at most ``prune_range - 1`` labels per frame, so sequence b can reach its
last label only when ``(prune_range - 1) * source_lengths[b] >= target_lengths[b]``; checked when the
lengths are concrete (a traced infeasible sequence gets an infinite pruned loss).

Gradients are first order (custom VJPs around the lattice recursion), exactly zero outside each sequence's
valid frames and labels; the simple loss's gradient flows into am and lm through the normaliser matmul.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from .rnnt_loss import (
    _arc_occupancies,
    _as_array,
    _check_common,
    _check_target_values,
    _chunked_joiner_costs,
    _compute_dtype,
    _joiner_vocab,
    _label_index,
    _reduce,
    _resolve_blank,
)

__all__ = ["rnnt_loss_simple", "rnnt_prune_ranges", "rnnt_loss_pruned", "pruned_rnnt_loss"]

Array = Any


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def _floating(name: str, x: Any, ndim: int, what: str) -> None:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array of shape {what}, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {tuple(x.shape)}")


def _check_prune_range(prune_range: Any) -> None:
    if isinstance(prune_range, bool) or not isinstance(prune_range, (int, np.integer)) or prune_range < 1:
        raise ValueError(f"prune_range: expected an int >= 1, got {prune_range!r}")


def _check_feasible(prune_range: int, source_lengths: Any, target_lengths: Any) -> None:
    """Windows move at most prune_range - 1 labels a frame: each sequence must reach its last label."""
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


def _check_scale(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a Python float, got {type(value).__name__}")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}: expected a value in [0, 1], got {value}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Lattice costs with occupancies as the gradient
# --------------------------------------------------------------------------------------------------


def _lattice_fwd(blank_lp, label_lp, frame_lengths, target_lengths):
    costs, blank_occ, label_occ, _ = _arc_occupancies(blank_lp, label_lp, frame_lengths, target_lengths, 0.0)
    return (costs, blank_occ, label_occ), (blank_occ, label_occ)


def _lattice_bwd(residuals, cotangents):
    blank_occ, label_occ = residuals
    cost_cotangent = cotangents[0][:, None, None]
    # The occupancies are returned as values, not differentiated (their cotangents are ignored).
    return -blank_occ * cost_cotangent, -label_occ * cost_cotangent, None, None


@jax.custom_vjp
def _lattice(blank_lp, label_lp, frame_lengths, target_lengths):
    """(B, T, U + 1) arc log-probabilities -> costs (B,), blank and label occupancies (B, T, U + 1)."""
    return _lattice_fwd(blank_lp, label_lp, frame_lengths, target_lengths)[0]


_lattice.defvjp(_lattice_fwd, _lattice_bwd)


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
    _floating("am_logits", am_logits, 3, "(B, T, V)")
    _floating("lm_logits", lm_logits, 3, "(B, U + 1, V)")
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
    targets, logit_lengths, target_lengths = map(_as_array, (targets, logit_lengths, target_lengths))
    _check_common(
        batch=batch,
        max_frames=frames,
        max_target=nodes - 1,
        targets=targets,
        frame_lengths=logit_lengths,
        target_lengths=target_lengths,
        frame_lengths_name="logit_lengths",
        blank=blank,
        clamp=-1.0,
        reduction=reduction,
        fastemit_lambda=0.0,
    )
    lm_scale = _check_scale("lm_only_scale", lm_only_scale)
    am_scale = _check_scale("am_only_scale", am_only_scale)
    if lm_scale + am_scale > 1.0:
        raise ValueError(
            f"lm_only_scale, am_only_scale: expected a sum of at most 1, got {lm_scale} + {am_scale}"
        )
    blank = _resolve_blank(blank, vocab)
    _check_target_values(targets, target_lengths, vocab, blank)

    dtype = _compute_dtype(jnp.promote_types(am_logits.dtype, lm_logits.dtype))
    logit_lengths = jnp.clip(jnp.asarray(logit_lengths), 1, frames)
    target_lengths = jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1)
    label_index = _label_index(jnp.asarray(targets), nodes, vocab)
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
    costs, blank_occ, label_occ = _lattice(blank_lp, label_lp, logit_lengths, target_lengths)
    loss = _reduce(costs, reduction)
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
    _check_prune_range(prune_range)
    _floating("label_occupancy", label_occupancy, 3, "(B, T, U + 1)")
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


# --------------------------------------------------------------------------------------------------
# Pruned loss
# --------------------------------------------------------------------------------------------------


def _window_to_lattice(x: Array, start: Array, nodes: int) -> Array:
    """(B, T, K) window values -> (B, T, U1) lattice values, -inf outside each frame's window."""
    offset = jnp.arange(nodes)[None, None, :] - start[..., None]
    inside = (offset >= 0) & (offset < x.shape[-1])
    return jnp.where(inside, jnp.take_along_axis(x, jnp.clip(offset, 0, x.shape[-1] - 1), axis=2), -jnp.inf)


def _lattice_to_window(x: Array, positions: Array) -> Array:
    """(B, T, U1) lattice values -> (B, T, K) at ``positions`` (0 beyond U)."""
    nodes = x.shape[-1]
    gathered = jnp.take_along_axis(x, jnp.clip(positions, 0, nodes - 1), axis=2)
    return jnp.where(positions < nodes, gathered, 0.0)


def _window_log_probs(logits: Array, label_index: Array, blank: int) -> tuple[Array, Array, Array]:
    """(B, Tc, K, V) logits -> log-probabilities of blank and of the label, softmax denominators (B, Tc, K)."""
    x = logits.astype(_compute_dtype(logits.dtype))
    peak = jnp.max(x, axis=-1)
    peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
    denominator = peak + jnp.log(jnp.sum(jnp.exp(x - peak[..., None]), axis=-1))
    blank_lp = x[..., blank] - denominator
    label_lp = jnp.take_along_axis(x, label_index[..., None], axis=-1)[..., 0] - denominator
    return blank_lp, label_lp, denominator


def _window_logits_gradient(logits, denominator, label_index, blank_occ, label_occ, cost_cotangent, blank):
    """d cost / d logits (B, Tc, K, V) from the window occupancies, times each sequence's cotangent."""
    dtype = denominator.dtype
    classes = jnp.arange(logits.shape[-1])
    emitted = jnp.where(classes == blank, blank_occ[..., None], 0.0) + jnp.where(
        classes == label_index[..., None], label_occ[..., None], 0.0
    )
    probs = jnp.exp(logits.astype(dtype) - denominator[..., None])
    # Occupancies are exactly 0 outside the valid lattice; the where keeps junk logits (inf) out as well.
    occupied = (blank_occ + label_occ)[..., None]
    grad = jnp.where(occupied > 0, occupied * probs, 0.0) - emitted
    return (grad * cost_cotangent.astype(dtype)[:, None, None, None]).astype(logits.dtype)


def _pruned_costs(
    joiner: Callable[..., Array], num_chunks: int, chunk_size: int, frames: int, nodes: int, blank: int
) -> Callable[..., Array]:
    """``rnnt_loss._chunked_joiner_costs`` over the windows: chunked (source (B, Tp, D), pruned target
    (B, Tp, K, D)), whole consts, chunk_data (label_index (B, Tp, K),), shared (start (B, Tp), frame_lengths,
    target_lengths); ``joiner`` is closure-converted: (source_chunk, pruned_target_chunk, *consts) -> logits
    (B, Tc, K, V). The forward pass keeps (B, T, K) log-probabilities, so that no more than a chunk of
    (B, Tc, K, V) logits lives at once."""

    def log_probs(logits, data, shared):
        return _window_log_probs(logits, data[0], blank)

    def lattice(blank_lp, label_lp, shared):
        start, frame_lengths, target_lengths = shared
        window_start = start[:, :frames]
        costs, blank_occ, label_occ, _ = _arc_occupancies(
            _window_to_lattice(blank_lp, window_start, nodes),
            _window_to_lattice(label_lp, window_start, nodes),
            frame_lengths,
            target_lengths,
            0.0,
        )
        positions = start[..., None] + jnp.arange(blank_lp.shape[-1])
        pad = [(0, 0), (0, num_chunks * chunk_size - frames), (0, 0)]
        # (B, Tp, K) each; padded frames 0
        return costs, tuple(_lattice_to_window(jnp.pad(x, pad), positions) for x in (blank_occ, label_occ))

    def logits_gradient(logits, denominator, occupancies, data, shared, cost_cotangent):
        blank_occ, label_occ = occupancies
        return _window_logits_gradient(
            logits, denominator, data[0], blank_occ, label_occ, cost_cotangent, blank
        )

    return _chunked_joiner_costs(joiner, num_chunks, chunk_size, frames, log_probs, lattice, logits_gradient)


def rnnt_loss_pruned(
    source_encodings: Array,
    target_encodings: Array,
    joiner: Callable[[Array, Array], Array],
    ranges: Array,
    targets: Array,
    source_lengths: Array,
    target_lengths: Array,
    *,
    blank: int = -1,
    reduction: str = "mean",
    chunk_size: int = 64,
) -> Array:
    """RNN-T loss over the lattice nodes inside ``ranges`` only, the joiner run on those nodes alone.

    With windows covering every label position (``prune_range >= U + 1``, all starts 0) this equals
    ``rnnt_loss(full_joiner(source_encodings, target_encodings), ...)``, values and gradients.

    Args:
        source_encodings: (B, T, D) encoder output.
        target_encodings: (B, U + 1, D) predictor output (blank-prefixed targets).
        joiner: JAX-traceable ``(source_encodings (B, T, D), pruned_target_encodings (B, T, K, D)) -> logits
            (B, T, K, V)``, joining frame t with its K gathered target encodings (e.g.
            ``streamformer.rnnt.pruned_joiner_fn(model, variables)``); it must treat frames independently
            (as a joiner does). Gradients flow into the values it closes over and into both encodings.
        ranges: (B, T, K) integer label positions per frame, ``ranges[b, t, k] = ranges[b, t, 0] + k``
            (from :func:`rnnt_prune_ranges`).
        targets: (B, U) integer labels without blank.
        source_lengths: (B,) integer valid frames, in [1, T].
        target_lengths: (B,) integer valid labels, in [0, U].
        blank, reduction: as in :func:`streamformer.rnnt_loss`.
        chunk_size: frames joined at once (T is padded up to a multiple of it). The forward pass keeps only
            (B, T, K) log-probabilities; the backward pass recomputes the logits chunk by chunk, so at most
            (B, chunk_size, K, V) logits live at once (one extra joiner forward for that memory).

    Returns:
        float32 loss ((B,) for reduction "none", else a scalar); float64 when the joiner returns float64.
        A sequence whose windows hold no complete alignment gets an infinite loss.
    """
    _floating("source_encodings", source_encodings, 3, "(B, T, D)")
    _floating("target_encodings", target_encodings, 3, "(B, U + 1, D)")
    if not callable(joiner):
        raise TypeError(f"joiner: expected a callable, got {type(joiner).__name__}")
    batch, frames, _ = source_encodings.shape
    if target_encodings.shape[0] != batch:
        raise ValueError(
            f"target_encodings: expected batch size {batch} (as source_encodings), "
            f"got {target_encodings.shape[0]}"
        )
    nodes = target_encodings.shape[1]
    ranges = _as_array(ranges)
    _checks.array_shape("ranges", ranges, (batch, frames, None), "(B, T, K)")
    _checks.integer_array("ranges", ranges)
    size = ranges.shape[2]
    _check_prune_range(size)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    targets, source_lengths, target_lengths = map(_as_array, (targets, source_lengths, target_lengths))
    _check_common(
        batch=batch,
        max_frames=frames,
        max_target=nodes - 1,
        targets=targets,
        frame_lengths=source_lengths,
        target_lengths=target_lengths,
        frame_lengths_name="source_lengths",
        blank=blank,
        clamp=-1.0,
        reduction=reduction,
        fastemit_lambda=0.0,
    )
    if _checks.is_concrete(ranges):
        values = np.asarray(ranges)
        if values.size and (
            np.any(values != values[..., :1] + np.arange(size))
            or values.min() < 0
            or values[..., 0].max() >= nodes
        ):
            raise ValueError(
                f"ranges: expected consecutive label positions ranges[..., 0] + k with starts in [0, {nodes - 1}], "
                f"got starts in [{values[..., 0].min()}, {values[..., 0].max()}]"
            )

    source = jnp.asarray(source_encodings)
    target = jnp.asarray(target_encodings)
    frame_lengths = jnp.clip(jnp.asarray(source_lengths), 1, frames)
    labels = jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1)
    start = jnp.asarray(ranges)[..., 0].astype(jnp.int32)
    positions = start[..., None] + jnp.arange(size, dtype=jnp.int32)  # (B, T, K)
    frame_valid = jnp.arange(frames)[None, :] < frame_lengths[:, None]  # (B, T)
    node_valid = frame_valid[..., None] & (positions <= labels[:, None, None])

    # Padding (frames, labels, window positions past U_b) is zeroed before the joiner, so that junk there
    # neither reaches a valid node nor turns the joiner's zero cotangents into NaN.
    source = jnp.where(frame_valid[..., None], source, jnp.zeros((), source.dtype))
    pruned_target = jax.vmap(lambda encodings, index: encodings[index])(
        target, jnp.clip(positions, 0, nodes - 1)
    )
    pruned_target = jnp.where(node_valid[..., None], pruned_target, jnp.zeros((), target.dtype))

    vocab = _joiner_vocab(
        joiner,
        (source, pruned_target),
        (batch, frames, size),
        "(B, T, K, V)",
        " from (source (B, T, D), pruned targets (B, T, K, D))",
    )
    blank = _resolve_blank(blank, vocab)
    _check_target_values(targets, target_lengths, vocab, blank)

    label_index = jnp.take_along_axis(
        _label_index(jnp.asarray(targets), nodes, vocab),
        jnp.clip(positions, 0, nodes - 1).reshape(batch, -1),
        1,
    ).reshape(positions.shape)

    chunk_size = int(min(chunk_size, frames))
    num_chunks = -(-frames // chunk_size)
    pad = num_chunks * chunk_size - frames

    def pad_frames(x):
        return jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))

    source, pruned_target, start, label_index = map(pad_frames, (source, pruned_target, start, label_index))
    converted_joiner, consts = jax.closure_convert(
        joiner, source[:, :chunk_size], pruned_target[:, :chunk_size]
    )
    costs_fn = _pruned_costs(converted_joiner, num_chunks, chunk_size, frames, nodes, blank)
    costs = costs_fn((source, pruned_target), tuple(consts), (label_index,), (start, frame_lengths, labels))
    return _reduce(costs, reduction)


# --------------------------------------------------------------------------------------------------
# All three
# --------------------------------------------------------------------------------------------------


def pruned_rnnt_loss(
    source_encodings: Array,
    target_encodings: Array,
    joiner: Callable[[Array, Array], Array],
    am_logits: Array,
    lm_logits: Array,
    targets: Array,
    source_lengths: Array,
    target_lengths: Array,
    *,
    prune_range: int = 5,
    blank: int = -1,
    reduction: str = "mean",
    lm_only_scale: float = 0.25,
    am_only_scale: float = 0.0,
    chunk_size: int = 64,
) -> tuple[Array, Array]:
    """The simple loss, the ranges from its occupations, and the pruned loss, as icefall trains with them.

    Args:
        source_encodings: (B, T, D) encoder output; target_encodings: (B, U + 1, D) predictor output.
        joiner: as in :func:`rnnt_loss_pruned`.
        am_logits: (B, T, V) and lm_logits: (B, U + 1, V): the two simple-loss projections of the encodings.
        targets, source_lengths, target_lengths, blank, reduction: as in :func:`rnnt_loss_pruned`.
        prune_range: label positions evaluated per frame (K).
        lm_only_scale, am_only_scale: the simple loss's smoothing (icefall: 0.25 and 0.0).
        chunk_size: frames the pruned loss joins at once (see :func:`rnnt_loss_pruned`).

    Returns:
        ``(simple_loss, pruned_loss)``, each reduced as ``reduction`` says. The ranges carry no gradient;
        the simple loss trains the projections (and the encodings through them), the pruned loss the joiner.
    """
    _check_prune_range(prune_range)
    _floating("am_logits", am_logits, 3, "(B, T, V)")
    _floating("lm_logits", lm_logits, 3, "(B, U + 1, V)")
    _floating("source_encodings", source_encodings, 3, "(B, T, D)")
    _floating("target_encodings", target_encodings, 3, "(B, U + 1, D)")
    if am_logits.shape[:2] != source_encodings.shape[:2]:
        raise ValueError(
            f"am_logits: expected (B, T) = {tuple(source_encodings.shape[:2])} as source_encodings, "
            f"got shape {tuple(am_logits.shape)}"
        )
    if lm_logits.shape[:2] != target_encodings.shape[:2]:
        raise ValueError(
            f"lm_logits: expected (B, U + 1) = {tuple(target_encodings.shape[:2])} as target_encodings, "
            f"got shape {tuple(lm_logits.shape)}"
        )
    window = int(prune_range)
    example = jax.eval_shape(
        joiner,
        jax.ShapeDtypeStruct(source_encodings.shape, source_encodings.dtype),
        jax.ShapeDtypeStruct(
            source_encodings.shape[:2] + (window, target_encodings.shape[2]), target_encodings.dtype
        ),
    )
    vocab = example.shape[-1] if len(example.shape) == 4 else None
    if vocab is not None and am_logits.shape[2] != vocab:
        raise ValueError(
            f"am_logits, lm_logits: expected the joiner's vocabulary size V = {vocab}, "
            f"got {am_logits.shape[2]}"
        )
    simple_loss, (label_occ, blank_occ) = rnnt_loss_simple(
        am_logits,
        lm_logits,
        targets,
        source_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
        lm_only_scale=lm_only_scale,
        am_only_scale=am_only_scale,
        return_grad=True,
    )
    ranges = rnnt_prune_ranges(
        label_occ, blank_occ, _as_array(source_lengths), _as_array(target_lengths), prune_range
    )
    pruned_loss = rnnt_loss_pruned(
        source_encodings,
        target_encodings,
        joiner,
        ranges,
        targets,
        source_lengths,
        target_lengths,
        blank=blank,
        reduction=reduction,
        chunk_size=chunk_size,
    )
    return simple_loss, pruned_loss
