"""Pruned RNN-T loss (Kuang et al. 2022, "Pruned RNN-T for fast, memory-efficient ASR training") in JAX.

Three steps, each public, and a convenience that runs them in order (:func:`pruned_rnnt_loss`):

1. :func:`~streamformer.losses.simple.rnnt_loss_simple`: the loss of an additive joiner, never forming the
   joint, and the arc occupations that locate the label positions that matter on each frame.
2. :func:`~streamformer.losses.simple.rnnt_prune_ranges`: for each frame, a window of ``prune_range``
   consecutive label positions chosen from those occupations as k2 chooses it.
3. :func:`rnnt_loss_pruned`: the real joiner evaluated only on the (B, T, prune_range) nodes of the windows,
   and the RNN-T recursion over the lattice restricted to them (every other node has probability 0). As
   ``rnnt_loss_from_encodings`` does for the full lattice, the joiner runs on chunks of frames and its logits
   are recomputed in the backward pass (:func:`streamformer.losses.lattice.chunked_joiner_costs`), so that only
   a chunk of (B, Tc, prune_range, V) logits lives at once.

Arc layout: (B, T, U + 1) in the lattice's (frame, label position) order, as in
:mod:`streamformer.losses.lattice`; a window of K = prune_range positions starting at ``start[b, t]`` holds
nodes (t, start[b, t] + k), k < K.

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

from .. import _checks
from . import checks, lattice
from .simple import rnnt_loss_simple, rnnt_prune_ranges

__all__ = ["rnnt_loss_pruned", "pruned_rnnt_loss"]

Array = Any


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
    """``lattice.chunked_joiner_costs`` over the windows: chunked (source (B, Tp, D), pruned target
    (B, Tp, K, D)), whole consts, chunk_data (label_index (B, Tp, K),), shared (start (B, Tp), frame_lengths,
    target_lengths); ``joiner`` is closure-converted: (source_chunk, pruned_target_chunk, *consts) -> logits
    (B, Tc, K, V). The forward pass keeps (B, T, K) log-probabilities, so that no more than a chunk of
    (B, Tc, K, V) logits lives at once."""

    def log_probs(logits, data, shared):
        return lattice.gather_log_probs(logits, data[0], blank, True, lattice.compute_dtype(logits.dtype))

    def window_occupancies(blank_lp, label_lp, shared):
        start, frame_lengths, target_lengths = shared
        window_start = start[:, :frames]
        costs, blank_occ, label_occ, _ = lattice.arc_occupancies(
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

    def chunk_logits_gradient(logits, denominator, occupancies, data, shared, cost_cotangent):
        blank_occ, label_occ = occupancies
        return _window_logits_gradient(
            logits, denominator, data[0], blank_occ, label_occ, cost_cotangent, blank
        )

    return lattice.chunked_joiner_costs(
        joiner, num_chunks, chunk_size, frames, log_probs, window_occupancies, chunk_logits_gradient
    )


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
            ``streamformer.pruned_joiner_fn(model, variables)``); it must treat frames independently
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
    checks.check_floating("source_encodings", source_encodings, 3, "(B, T, D)")
    checks.check_floating("target_encodings", target_encodings, 3, "(B, U + 1, D)")
    if not callable(joiner):
        raise TypeError(f"joiner: expected a callable, got {type(joiner).__name__}")
    batch, frames, _ = source_encodings.shape
    if target_encodings.shape[0] != batch:
        raise ValueError(
            f"target_encodings: expected batch size {batch} (as source_encodings), "
            f"got {target_encodings.shape[0]}"
        )
    nodes = target_encodings.shape[1]
    ranges = checks.as_array(ranges)
    _checks.array_shape("ranges", ranges, (batch, frames, None), "(B, T, K)")
    _checks.integer_array("ranges", ranges)
    size = ranges.shape[2]
    checks.check_positive_int("prune_range", size)
    checks.check_positive_int("chunk_size", chunk_size)
    targets, source_lengths, target_lengths = map(checks.as_array, (targets, source_lengths, target_lengths))
    checks.check_loss_options(blank=blank, reduction=reduction)
    checks.check_targets_and_lengths(
        targets, source_lengths, target_lengths, (batch, frames, nodes - 1), "source_lengths"
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

    vocab = checks.joiner_vocab(
        joiner,
        (source, pruned_target),
        (batch, frames, size),
        "(B, T, K, V)",
        " from (source (B, T, D), pruned targets (B, T, K, D))",
    )
    blank = checks.resolve_blank(blank, vocab)
    checks.check_target_values(targets, target_lengths, vocab, blank)

    label_index = jnp.take_along_axis(
        lattice.label_indices(jnp.asarray(targets), nodes, vocab),
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
    return lattice.reduce_costs(costs, reduction)


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
    checks.check_positive_int("prune_range", prune_range)
    checks.check_floating("am_logits", am_logits, 3, "(B, T, V)")
    checks.check_floating("lm_logits", lm_logits, 3, "(B, U + 1, V)")
    checks.check_floating("source_encodings", source_encodings, 3, "(B, T, D)")
    checks.check_floating("target_encodings", target_encodings, 3, "(B, U + 1, D)")
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
        label_occ, blank_occ, checks.as_array(source_lengths), checks.as_array(target_lengths), prune_range
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
