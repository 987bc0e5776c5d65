"""The RNN-T lattice shared by the losses: arc log-probabilities, forward-backward, gradients, chunked joins.

Shape letters: B batch, T frames, U labels, U1 = U + 1 lattice nodes per frame (label positions 0..U), V
vocabulary, N = T + U1 - 1 anti-diagonals, Tc frames of a chunk, K nodes of a pruned window.

Arc layout: ``blank[b, t, u]`` is the log-probability of the arc (t, u) -> (t + 1, u) (at each sequence's last
frame and label: the final blank that ends the alignment), ``label[b, t, u]`` that of the arc (t, u) -> (t, u + 1)
emitting ``targets[b, u]``.

Every node of an anti-diagonal t + u = n depends only on diagonal n - 1, so the forward variables alpha and the
backward variables beta are two ``lax.scan`` over the N diagonals (:func:`skew` lays the lattice out by
diagonal), in float32 (float64 for float64 inputs, :func:`compute_dtype`). :func:`arc_occupancies` returns the
posterior probability of each arc, from which the logits gradient is closed-form (:func:`logits_gradient`):
with ``p = softmax(logits)``, ``gb`` and ``ge`` the occupancies of the blank and label arcs leaving (t, u),

    d cost / d logits[t, u, k] = (gb + ge) * p[k] - gb * [k == blank] - ge * [k == target[u]].

:func:`chunked_joiner_costs` builds a custom-VJP cost function whose joint logits are formed a chunk of frames
at a time and recomputed in the backward pass; ``rnnt_loss_from_encodings`` (the full lattice) and
``rnnt_loss_pruned`` (windows of it) are both built on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def compute_dtype(dtype: Any) -> Any:
    """float64 stays float64 (when x64 is on); every narrower float is accumulated in float32."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


def reduce_costs(costs: Array, reduction: str) -> Array:
    """(B,) per-sequence costs -> the loss: their mean, their sum, or themselves ("none")."""
    if reduction == "mean":
        return jnp.mean(costs)
    if reduction == "sum":
        return jnp.sum(costs)
    return costs


# --------------------------------------------------------------------------------------------------
# Forward-backward
# --------------------------------------------------------------------------------------------------


def skew(x: Array, fill: Any) -> Array:
    """(B, T, U1) -> (N, B, U1) with N = T + U1 - 1: out[n, b, u] = x[b, n - u, u] (``fill`` off the grid)."""
    _, frames, nodes = x.shape
    diagonals = jnp.arange(frames + nodes - 1)[:, None]
    u = jnp.arange(nodes)[None, :]
    t = diagonals - u
    gathered = x[:, jnp.clip(t, 0, frames - 1), u]  # (B, N, U1)
    gathered = jnp.where(((t >= 0) & (t < frames))[None], gathered, fill)
    return jnp.moveaxis(gathered, 1, 0)


def unskew(x: Array, frames: int) -> Array:
    """(N, B, U1) -> (B, T, U1): out[b, t, u] = x[t + u, b, u] (the inverse of :func:`skew`)."""
    nodes = x.shape[-1]
    t = jnp.arange(frames)[:, None]
    u = jnp.arange(nodes)[None, :]
    return jnp.moveaxis(x[t + u, :, u], 2, 0)


def _shift_up(v: Array) -> Array:
    """v[..., u] -> v[..., u + 1], -inf at the end."""
    return jnp.concatenate([v[..., 1:], jnp.full_like(v[..., :1], -jnp.inf)], axis=-1)


def _shift_down(v: Array) -> Array:
    """v[..., u] -> v[..., u - 1], -inf at the start."""
    return jnp.concatenate([jnp.full_like(v[..., :1], -jnp.inf), v[..., :-1]], axis=-1)


def arc_occupancies(
    blank_log_probs: Array,
    label_log_probs: Array,
    frame_lengths: Array,
    target_lengths: Array,
    fastemit_lambda: float,
) -> tuple[Array, Array, Array, Array]:
    """Forward-backward on the lattice.

    Args:
        blank_log_probs: (B, T, U1) log-probability of blank at node (t, u).
        label_log_probs: (B, T, U1) log-probability of target label u at node (t, u) (last column unused).
        frame_lengths: (B,) valid frames per sequence, in [1, T].
        target_lengths: (B,) valid labels per sequence, in [0, U].
        fastemit_lambda: FastEmit weight; scales the label-arc occupancies by 1 + lambda.

    Returns:
        costs: (B,) negative log-likelihood of each sequence.
        blank_occupancy: (B, T, U1) posterior probability of taking the blank arc leaving (t, u).
        label_occupancy: (B, T, U1) same for the label arc (times 1 + fastemit_lambda).
        valid: (B, T, U1) bool, the nodes of each sequence's lattice.
    """
    _, frames, nodes = blank_log_probs.shape
    t = jnp.arange(frames)[None, :, None]
    u = jnp.arange(nodes)[None, None, :]
    last_frame = (frame_lengths - 1)[:, None, None]
    last_label = target_lengths[:, None, None]
    valid = (t <= last_frame) & (u <= last_label)
    blank_lp = jnp.where(valid, blank_log_probs, -jnp.inf)
    label_lp = jnp.where(valid & (u < last_label), label_log_probs, -jnp.inf)

    blank_diag = skew(blank_lp, -jnp.inf)  # (N, B, U1)
    label_diag = skew(label_lp, -jnp.inf)
    terminal = skew((t == last_frame) & (u == last_label), False)

    # alpha[t, u] = logaddexp(alpha[t - 1, u] + blank[t - 1, u], alpha[t, u - 1] + label[t, u - 1])
    def alpha_step(prev, arcs):
        blank_prev, label_prev = arcs
        current = jnp.logaddexp(prev + blank_prev, _shift_down(prev + label_prev))
        return current, current

    alpha_first = jnp.where(jnp.arange(nodes) == 0, 0.0, -jnp.inf).astype(blank_lp.dtype)
    alpha_first = jnp.broadcast_to(alpha_first, blank_diag.shape[1:])
    _, alpha_rest = jax.lax.scan(alpha_step, alpha_first, (blank_diag[:-1], label_diag[:-1]))
    alpha = unskew(jnp.concatenate([alpha_first[None], alpha_rest], axis=0), frames)

    # beta[t, u] = logaddexp(beta[t + 1, u] + blank[t, u], beta[t, u + 1] + label[t, u]); at the last
    # node of each sequence beta = blank (the final blank ends the alignment).
    def beta_step(following, arcs):
        blank_here, label_here, is_terminal = arcs
        current = jnp.logaddexp(following + blank_here, _shift_up(following) + label_here)
        current = jnp.where(is_terminal, blank_here, current)
        return current, current

    beta_last = jnp.full(blank_diag.shape[1:], -jnp.inf, blank_lp.dtype)
    _, beta_diag = jax.lax.scan(beta_step, beta_last, (blank_diag, label_diag, terminal), reverse=True)
    beta = unskew(beta_diag, frames)

    log_likelihood = beta[:, 0, 0]
    beta_after_blank = jnp.concatenate([beta[:, 1:], jnp.full_like(beta[:, :1], -jnp.inf)], axis=1)
    beta_after_blank = jnp.where((t == last_frame) & (u == last_label), 0.0, beta_after_blank)
    beta_after_label = _shift_up(beta)
    normaliser = log_likelihood[:, None, None]
    blank_occupancy = jnp.where(valid, jnp.exp(alpha + blank_lp + beta_after_blank - normaliser), 0.0)
    label_occupancy = jnp.where(valid, jnp.exp(alpha + label_lp + beta_after_label - normaliser), 0.0)
    if fastemit_lambda:
        label_occupancy = label_occupancy * (1.0 + fastemit_lambda)
    return -log_likelihood, blank_occupancy, label_occupancy, valid


def _lattice_costs_fwd(blank_lp, label_lp, frame_lengths, target_lengths):
    costs, blank_occ, label_occ, _ = arc_occupancies(blank_lp, label_lp, frame_lengths, target_lengths, 0.0)
    return (costs, blank_occ, label_occ), (blank_occ, label_occ)


def _lattice_costs_bwd(residuals, cotangents):
    blank_occ, label_occ = residuals
    cost_cotangent = cotangents[0][:, None, None]
    # The occupancies are returned as values, not differentiated (their cotangents are ignored).
    return -blank_occ * cost_cotangent, -label_occ * cost_cotangent, None, None


@jax.custom_vjp
def lattice_costs(
    blank_log_probs: Array, label_log_probs: Array, frame_lengths: Array, target_lengths: Array
) -> tuple[Array, Array, Array]:
    """(B, T, U1) arc log-probabilities -> costs (B,), blank and label occupancies (B, T, U1), differentiable in
    the arc log-probabilities: d cost / d arc = minus the arc's occupancy (the occupancies carry no gradient).
    Lengths as in :func:`arc_occupancies`."""
    return _lattice_costs_fwd(blank_log_probs, label_log_probs, frame_lengths, target_lengths)[0]


lattice_costs.defvjp(_lattice_costs_fwd, _lattice_costs_bwd)


# --------------------------------------------------------------------------------------------------
# From logits to arcs and back
# --------------------------------------------------------------------------------------------------


def label_indices(targets: Array, nodes: int, vocab: int) -> Array:
    """(B, U) targets -> (B, U1) the label each node's label arc emits, clipped into [0, V) (the last node's
    and the padding's are junk, masked by the lattice)."""
    padded = jnp.concatenate([targets, jnp.zeros((targets.shape[0], 1), targets.dtype)], axis=1)[:, :nodes]
    return jnp.clip(padded, 0, vocab - 1).astype(jnp.int32)


def gather_log_probs(
    logits: Array, label_index: Array, blank: int, fused_log_softmax: bool, dtype: Any
) -> tuple[Array, Array, Array]:
    """Arc log-probabilities of a block of the joint, in ``dtype``.

    Args:
        logits: (B, Tc, K, V) joint logits (K = U1 for the full lattice, the window size when pruned).
        label_index: (B, 1 or Tc, K) the label of each node's label arc.
        blank: blank index in [0, V).
        fused_log_softmax: log-softmax the logits over V (True) or take them as log-probabilities (False).
        dtype: the compute dtype (:func:`compute_dtype`).

    Returns:
        blank and label log-probabilities and the softmax denominators (0 when not fused), (B, Tc, K) each.
    """
    x = logits.astype(dtype)
    if fused_log_softmax:
        # log-sum-exp by hand: jax.nn.logsumexp's extra inf handling costs a full pass over the joint.
        peak = jnp.max(x, axis=-1)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        denominator = peak + jnp.log(jnp.sum(jnp.exp(x - peak[..., None]), axis=-1))
    else:
        denominator = jnp.zeros(x.shape[:-1], dtype)
    blank_lp = x[..., blank] - denominator
    label_lp = jnp.take_along_axis(x, label_index[..., None], axis=-1)[..., 0] - denominator
    return blank_lp, label_lp, denominator


def logits_gradient(
    logits: Array,
    denominator: Array,
    label_index: Array,
    blank_occupancy: Array,
    label_occupancy: Array,
    valid: Array,
    cost_cotangent: Array,
    blank: int,
    clamp: float,
    fused_log_softmax: bool,
) -> Array:
    """d cost / d logits (B, Tc, U1, V) for a block of frames of the full lattice, clamped per sequence to
    [-clamp, clamp] when clamp > 0, times each sequence's (B,) cotangent; 0 outside the (B, Tc, U1) ``valid``
    nodes. ``label_index`` is (B, U1), the occupancies and ``denominator`` (B, Tc, U1)."""
    dtype = denominator.dtype
    classes = jnp.arange(logits.shape[-1])
    is_blank = classes == blank
    is_label = classes == label_index[:, None, :, None]
    emitted = jnp.where(is_blank, blank_occupancy[..., None], 0.0) + jnp.where(
        is_label, label_occupancy[..., None], 0.0
    )
    if fused_log_softmax:
        probs = jnp.exp(logits.astype(dtype) - denominator[..., None])
        grad = (blank_occupancy + label_occupancy)[..., None] * probs - emitted
    else:
        grad = -emitted
    grad = jnp.where(valid[..., None], grad, 0.0)
    if clamp > 0:
        grad = jnp.clip(grad, -clamp, clamp)
    grad = grad * cost_cotangent.astype(dtype)[:, None, None, None]
    return grad.astype(logits.dtype)


# --------------------------------------------------------------------------------------------------
# Joined a chunk of frames at a time
# --------------------------------------------------------------------------------------------------


def chunked_joiner_costs(
    joiner: Callable[..., Array],
    num_chunks: int,
    chunk_size: int,
    frames: int,
    log_probs: Callable[..., tuple[Array, Array, Array]],
    lattice: Callable[..., tuple[Array, Any]],
    chunk_logits_gradient: Callable[..., Array],
) -> Callable[..., Array]:
    """Custom-VJP ``costs_fn(chunked, whole, chunk_data, shared) -> costs (B,)`` of an RNN-T loss whose logits
    ``joiner(*chunked_chunk, *whole)`` are formed ``chunk_size`` frames at a time, never all at once.

    chunked: tuple of (B, Tp, ...) joiner inputs taken chunk by chunk (Tp = num_chunks * chunk_size), with
        gradients. whole: tuple of joiner inputs every chunk sees (the closure-converted joiner's constants,
        perhaps an encoding), with gradients summed over chunks in at least float32. chunk_data: tuple of
        (B, Tp, ...) arrays without gradients, split like ``chunked``. shared: a pytree without gradients.

    The forward pass keeps each chunk's ``log_probs(logits, chunk_data_chunk, shared) -> (blank, label,
    denominator)`` and the lattice's ``lattice(blank, label, shared) -> (costs, occupancies)`` (over the first
    ``frames`` frames; occupancies a tuple of (B, Tp, ...) arrays, 0 on padded frames). The backward pass
    recomputes each chunk's logits, forms ``chunk_logits_gradient(logits, denominator_chunk, occupancies_chunk,
    chunk_data_chunk, shared, cost_cotangent)`` and pulls it back through ``joiner``: no more than one chunk of
    logits lives at once, for one extra joiner forward.
    """

    def split_chunks(x):  # (B, Tp, ...) -> (num_chunks, B, chunk_size, ...)
        x = x.reshape(x.shape[0], num_chunks, chunk_size, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def join_chunks(x):  # (num_chunks, B, chunk_size, ...) -> (B, Tp, ...)
        x = jnp.moveaxis(x, 0, 1)
        return x.reshape(x.shape[0], num_chunks * chunk_size, *x.shape[3:])

    def forward(chunked, whole, chunk_data, shared):
        def chunk_log_probs(chunk):
            inputs, data = chunk
            return log_probs(joiner(*inputs, *whole), data, shared)

        chunks = jax.tree.map(split_chunks, (chunked, chunk_data))
        blank_lp, label_lp, denominator = jax.tree.map(join_chunks, jax.lax.map(chunk_log_probs, chunks))
        costs, occupancies = lattice(blank_lp[:, :frames], label_lp[:, :frames], shared)
        return costs, (chunked, whole, chunk_data, shared, denominator, occupancies)

    def backward(residuals, cost_cotangent):
        chunked, whole, chunk_data, shared, denominator, occupancies = residuals

        def chunk_backward(accumulated, chunk):
            inputs, data, denominator_chunk, occupancies_chunk = chunk
            logits, pullback = jax.vjp(joiner, *inputs, *whole)
            grads = pullback(
                chunk_logits_gradient(
                    logits, denominator_chunk, occupancies_chunk, data, shared, cost_cotangent
                )
            )
            inputs_grad, whole_grad = tuple(grads[: len(inputs)]), tuple(grads[len(inputs) :])
            accumulated = jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), accumulated, whole_grad)
            return accumulated, inputs_grad

        # Sums over chunks accumulate in at least float32 (bfloat16 weights would lose their low bits).
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.promote_types(x.dtype, jnp.float32)), whole)
        chunks = jax.tree.map(split_chunks, (chunked, chunk_data, denominator, occupancies))
        accumulated, chunked_grad = jax.lax.scan(chunk_backward, zeros, chunks)
        whole_grad = jax.tree.map(lambda g, x: g.astype(x.dtype), accumulated, whole)
        return jax.tree.map(join_chunks, chunked_grad), whole_grad, None, None

    costs_fn = jax.custom_vjp(lambda *args: forward(*args)[0])
    costs_fn.defvjp(forward, backward)
    return costs_fn
