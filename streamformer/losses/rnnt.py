"""RNN-T loss (Graves 2012) in JAX: exact, jit- and vmap-able, with a memory-efficient entry point.

Two entry points:

- :func:`rnnt_loss` takes the full joint ``logits`` (B, T, U + 1, V), as torchaudio 2.8's
  ``torchaudio.functional.rnnt_loss`` does, with its semantics (blank, clamp, reduction,
  fused_log_softmax).
- :func:`rnnt_loss_from_encodings` takes the encoder and predictor outputs and a joiner callable and
  never holds more than ``chunk_size`` frames of the joint at once: the forward pass keeps only the
  log-probabilities of blank and of the next target label, (B, T, U + 1) each; the backward pass
  recomputes the joint chunk by chunk and pulls the analytic logits gradient back through the joiner.

How it is computed (:mod:`streamformer.losses.lattice`). Both entry points reduce the joint to two
(B, T, U + 1) arrays, the log-probability of blank and of the next target label at each lattice node (t, u),
run forward-backward over the lattice's anti-diagonals and form the gradient with respect to the logits in
closed form from the arc occupancies (torchaudio's CPU kernel computes the same).

With ``fused_log_softmax=False`` the inputs are log-probabilities and the gradient is ``-gb`` at blank,
``-ge`` at the target and 0 elsewhere (torchaudio's convention: no softmax Jacobian). ``clamp > 0``
clips each sequence's gradient element-wise to [-clamp, clamp] before the reduction scales it, as
torchaudio does. Outside each sequence's valid nodes (t < logit_length, u <= target_length) the gradient
is exactly zero.

FastEmit (Yu et al. 2021, arXiv:2010.11148), ``fastemit_lambda = lambda``: the loss value stays the
RNN-T negative log-likelihood; only the gradient changes, the label-emission occupancy ``ge`` being
scaled by ``1 + lambda`` in the gradient formula. This is the gradient of Eq. 10 of the paper and what
NeMo's and warp-transducer's ``fastemit_lambda`` compute. ``lambda = 0`` is the plain RNN-T gradient.

Gradients are first order only (custom VJPs); the functions are not differentiable twice.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import checks, lattice

__all__ = ["rnnt_loss", "rnnt_loss_from_encodings"]

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# Full joint
# --------------------------------------------------------------------------------------------------


def _costs_from_logits_fwd(logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit):
    dtype = lattice.compute_dtype(logits.dtype)
    label_index = lattice.label_indices(targets, logits.shape[2], logits.shape[3])
    blank_lp, label_lp, denominator = lattice.gather_log_probs(
        logits, label_index[:, None], blank, fused, dtype
    )
    costs, blank_occ, label_occ, valid = lattice.arc_occupancies(
        blank_lp, label_lp, logit_lengths, target_lengths, fastemit
    )
    return costs, (logits, denominator, label_index, blank_occ, label_occ, valid)


def _costs_from_logits_bwd(blank, clamp, fused, fastemit, residuals, cost_cotangent):
    logits, denominator, label_index, blank_occ, label_occ, valid = residuals
    grad = lattice.logits_gradient(
        logits, denominator, label_index, blank_occ, label_occ, valid, cost_cotangent, blank, clamp, fused
    )
    return grad, None, None, None


def _costs_from_logits_impl(logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit):
    return _costs_from_logits_fwd(
        logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit
    )[0]


_costs_from_logits = jax.custom_vjp(_costs_from_logits_impl, nondiff_argnums=(4, 5, 6, 7))
_costs_from_logits.defvjp(_costs_from_logits_fwd, _costs_from_logits_bwd)


def rnnt_loss(
    logits: Array,
    targets: Array,
    logit_lengths: Array,
    target_lengths: Array,
    blank: int = -1,
    clamp: float = -1.0,
    reduction: str = "mean",
    fused_log_softmax: bool = True,
    fastemit_lambda: float = 0.0,
) -> Array:
    """RNN-T loss of a full joint, with the semantics of torchaudio 2.8's ``functional.rnnt_loss``.

    Args:
        logits: (B, T, U + 1, V) joiner output (float16, bfloat16, float32 or float64). With
            ``fused_log_softmax=False``, log-probabilities instead.
        targets: (B, U) integer labels, none equal to blank within ``target_lengths`` (padding is ignored).
        logit_lengths: (B,) integer valid frames per sequence, in [1, T].
        target_lengths: (B,) integer valid labels per sequence, in [0, U].
        blank: blank index; negative counts from the end (-1 is V - 1).
        clamp: when > 0, each sequence's gradient with respect to ``logits`` is clipped element-wise to
            [-clamp, clamp] (before the reduction scales it), as torchaudio does.
        reduction: "none" (per-sequence losses, (B,)), "mean" (mean over the batch) or "sum".
        fused_log_softmax: apply log_softmax over V inside the loss (True) or take ``logits`` as
            log-probabilities (False; gradient with respect to those log-probabilities, as torchaudio).
        fastemit_lambda: FastEmit weight (>= 0); scales the label-emission part of the gradient by 1 + lambda
            and leaves the loss value unchanged (see the module docstring).

    Returns:
        float32 loss ((B,) for reduction "none", else a scalar); float64 for float64 logits.

    Gradients flow to ``logits`` only (first order); they are exactly zero outside each sequence's valid
    nodes (t >= logit_length or u > target_length).
    """
    if not hasattr(logits, "shape") or not hasattr(logits, "dtype"):
        raise TypeError(f"logits: expected an array, got {type(logits).__name__}")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits: expected a floating dtype, got {logits.dtype}")
    if logits.ndim != 4:
        raise ValueError(f"logits: expected 4 dimensions (B, T, U + 1, V), got shape {tuple(logits.shape)}")
    batch, frames, nodes, vocab = logits.shape
    targets, logit_lengths, target_lengths = map(checks.as_array, (targets, logit_lengths, target_lengths))
    if frames < 1 or nodes < 1 or vocab < 2:
        raise ValueError(f"logits: expected T >= 1, U + 1 >= 1 and V >= 2, got shape {tuple(logits.shape)}")
    checks.check_loss_options(blank=blank, reduction=reduction, clamp=clamp, fastemit_lambda=fastemit_lambda)
    checks.check_targets_and_lengths(
        targets, logit_lengths, target_lengths, (batch, frames, nodes - 1), "logit_lengths"
    )
    blank = checks.resolve_blank(blank, vocab)
    checks.check_target_values(targets, target_lengths, vocab, blank)

    logits = jnp.asarray(logits)
    logit_lengths = jnp.clip(jnp.asarray(logit_lengths), 1, frames)
    target_lengths = jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1)
    costs = _costs_from_logits(
        logits,
        jnp.asarray(targets),
        logit_lengths,
        target_lengths,
        blank,
        float(clamp),
        bool(fused_log_softmax),
        float(fastemit_lambda),
    )
    return lattice.reduce_costs(costs, reduction)


# --------------------------------------------------------------------------------------------------
# From encodings, chunked over T
# --------------------------------------------------------------------------------------------------


def _encodings_costs(
    joiner: Callable[..., Array],
    num_chunks: int,
    chunk_size: int,
    frames: int,
    blank: int,
    clamp: float,
    fastemit: float,
) -> Callable[..., Array]:
    """``lattice.chunked_joiner_costs`` over the full lattice: chunked (source,), whole (target, *consts),
    shared (label_index (B, U + 1), source_lengths, target_lengths); ``joiner`` is closure-converted:
    (source_chunk, target_encodings, *consts) -> logits (B, Tc, U + 1, V)."""

    def log_probs(logits, data, shared):
        return lattice.gather_log_probs(
            logits, shared[0][:, None], blank, True, lattice.compute_dtype(logits.dtype)
        )

    def occupancies(blank_lp, label_lp, shared):
        _, source_lengths, target_lengths = shared
        costs, *arcs = lattice.arc_occupancies(blank_lp, label_lp, source_lengths, target_lengths, fastemit)
        pad = [(0, 0), (0, num_chunks * chunk_size - frames), (0, 0)]
        return costs, tuple(jnp.pad(x, pad) for x in arcs)  # blank, label, valid

    def chunk_logits_gradient(logits, denominator, arcs, data, shared, cost_cotangent):
        blank_occ, label_occ, valid = arcs
        return lattice.logits_gradient(
            logits, denominator, shared[0], blank_occ, label_occ, valid, cost_cotangent, blank, clamp, True
        )

    return lattice.chunked_joiner_costs(
        joiner, num_chunks, chunk_size, frames, log_probs, occupancies, chunk_logits_gradient
    )


def rnnt_loss_from_encodings(
    source_encodings: Array,
    target_encodings: Array,
    joiner: Callable[[Array, Array], Array],
    targets: Array,
    source_lengths: Array,
    target_lengths: Array,
    *,
    blank: int = -1,
    clamp: float = -1.0,
    reduction: str = "mean",
    fastemit_lambda: float = 0.0,
    chunk_size: int = 16,
) -> Array:
    """RNN-T loss from encoder and predictor outputs, never holding the full (B, T, U + 1, V) joint.

    Equals ``rnnt_loss(joiner(source_encodings, target_encodings), ...)`` (value and gradients, up to
    float rounding) with ``fused_log_softmax=True``. The joint is computed ``chunk_size`` frames at a
    time: the forward pass keeps the (B, T, U + 1) log-probabilities of blank and of the next label and
    the softmax denominators; the backward pass recomputes each chunk's logits, forms their analytic
    gradient (clamped as in :func:`rnnt_loss`) and pulls it back through ``joiner``. Peak memory is
    about one chunk of logits plus the joiner's activations for that chunk, instead of the whole joint
    and its gradient.

    Args:
        source_encodings: (B, T, D) encoder output.
        target_encodings: (B, U + 1, D) predictor output (blank-prefixed targets).
        joiner: JAX-traceable ``(source_chunk (B, Tc, D), target_encodings (B, U + 1, D)) -> logits
            (B, Tc, U + 1, V)``; it must treat frames independently (as a joiner does). Gradients flow
            into the values it closes over (e.g. ``lambda s, t: model.apply(variables, s, t,
            method=...)``) and into both encodings.
        targets: (B, U) integer labels without blank.
        source_lengths: (B,) integer valid frames, in [1, T].
        target_lengths: (B,) integer valid labels, in [0, U].
        blank, clamp, reduction, fastemit_lambda: as in :func:`rnnt_loss`.
        chunk_size: frames of the joint computed at once (T is padded up to a multiple of it).

    Returns:
        float32 loss ((B,) for reduction "none", else a scalar); float64 when the joiner returns float64.
    """
    checks.check_floating("source_encodings", source_encodings, 3, "(B, T, D)")
    checks.check_floating("target_encodings", target_encodings, 3, "(B, U + 1, D)")
    if not callable(joiner):
        raise TypeError(f"joiner: expected a callable, got {type(joiner).__name__}")
    checks.check_positive_int("chunk_size", chunk_size)
    batch, frames, _ = source_encodings.shape
    targets, source_lengths, target_lengths = map(checks.as_array, (targets, source_lengths, target_lengths))
    if target_encodings.shape[0] != batch:
        raise ValueError(
            f"target_encodings: expected batch size {batch} (as source_encodings), "
            f"got {target_encodings.shape[0]}"
        )
    nodes = target_encodings.shape[1]
    checks.check_loss_options(blank=blank, reduction=reduction, clamp=clamp, fastemit_lambda=fastemit_lambda)
    checks.check_targets_and_lengths(
        targets, source_lengths, target_lengths, (batch, frames, nodes - 1), "source_lengths"
    )

    chunk_size = int(min(chunk_size, frames))
    num_chunks = -(-frames // chunk_size)
    source = jnp.asarray(source_encodings)
    source = jnp.pad(source, [(0, 0), (0, num_chunks * chunk_size - frames), (0, 0)])
    target = jnp.asarray(target_encodings)
    example_chunk = source[:, :chunk_size]
    vocab = checks.joiner_vocab(
        joiner, (example_chunk, target), (batch, chunk_size, nodes), "(B, Tc, U + 1, V)"
    )
    blank = checks.resolve_blank(blank, vocab)
    checks.check_target_values(targets, target_lengths, vocab, blank)

    converted_joiner, consts = jax.closure_convert(joiner, example_chunk, target)
    costs_fn = _encodings_costs(
        converted_joiner, num_chunks, chunk_size, frames, blank, float(clamp), float(fastemit_lambda)
    )
    shared = (
        lattice.label_indices(jnp.asarray(targets), nodes, vocab),
        jnp.clip(jnp.asarray(source_lengths), 1, frames),
        jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1),
    )
    costs = costs_fn((source,), (target, *consts), (), shared)
    return lattice.reduce_costs(costs, reduction)
