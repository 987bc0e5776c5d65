"""RNN-T loss (Graves 2012) in JAX: exact, jit- and vmap-able, with a memory-efficient entry point.

Two entry points:

- :func:`rnnt_loss` takes the full joint ``logits`` (B, T, U + 1, V), as torchaudio 2.8's
  ``torchaudio.functional.rnnt_loss`` does, with its semantics (blank, clamp, reduction,
  fused_log_softmax).
- :func:`rnnt_loss_from_encodings` takes the encoder and predictor outputs and a joiner callable and
  never holds more than ``chunk_size`` frames of the joint at once: the forward pass keeps only the
  log-probabilities of blank and of the next target label, (B, T, U + 1) each; the backward pass
  recomputes the joint chunk by chunk and pulls the analytic logits gradient back through the joiner.

How it is computed. Both entry points reduce the joint to two (B, T, U + 1) arrays, the log-probability
of blank and of the next target label at each lattice node (t, u). The forward variables alpha and the
backward variables beta are computed by two ``lax.scan`` over the T + U anti-diagonals of the lattice
(every node of a diagonal depends only on the previous one), in float32 (float64 for float64 inputs).
The gradient with respect to the logits is then closed-form (torchaudio's CPU kernel computes the same):
with ``p = softmax(logits)``, ``gb`` and ``ge`` the posterior occupancies of the blank and label arcs
leaving node (t, u),

    d cost / d logits[t, u, k] = (gb + ge) * p[k] - gb * [k == blank] - ge * [k == target[u]].

With ``fused_log_softmax=False`` the inputs are log-probabilities and the gradient is ``-gb`` at blank,
``-ge`` at the target and 0 elsewhere (torchaudio's convention: no softmax Jacobian). ``clamp > 0``
clips each sequence's gradient element-wise to [-clamp, clamp] before the reduction scales it, as
torchaudio does. Outside each sequence's valid nodes (t < logit_length, u <= target_length) the gradient
is exactly zero.

FastEmit (Yu et al. 2021, arXiv:2010.11148), ``fastemit_lambda = lambda``: the loss value stays the
RNN-T negative log-likelihood; only the gradient changes, the label-emission occupancy ``ge`` being
scaled by ``1 + lambda`` in the formula above. This is the gradient of Eq. 10 of the paper and what
NeMo's and warp-transducer's ``fastemit_lambda`` compute. ``lambda = 0`` is the plain RNN-T gradient.

Gradients are first order only (custom VJPs); the functions are not differentiable twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _checks

__all__ = ["rnnt_loss", "rnnt_loss_from_encodings"]

_REDUCTIONS = ("none", "mean", "sum")

Array = jax.Array


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------


def _as_array(x: Any) -> Any:
    """Lists and scalars become numpy arrays (concrete, so their values can be checked)."""
    return x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)


def _check_common(
    *,
    batch: int,
    max_frames: int,
    max_target: int,
    targets: Any,
    frame_lengths: Any,
    target_lengths: Any,
    frame_lengths_name: str,
    blank: Any,
    clamp: Any,
    reduction: Any,
    fastemit_lambda: Any,
) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f'reduction: expected one of "none", "mean", "sum", got {reduction!r}')
    if not isinstance(blank, (int, np.integer)) or isinstance(blank, bool):
        raise TypeError(f"blank: expected a Python int, got {type(blank).__name__}")
    if not isinstance(clamp, (int, float, np.floating, np.integer)) or isinstance(clamp, bool):
        raise TypeError(f"clamp: expected a Python float, got {type(clamp).__name__}")
    if not isinstance(fastemit_lambda, (int, float, np.floating, np.integer)) or isinstance(
        fastemit_lambda, bool
    ):
        raise TypeError(f"fastemit_lambda: expected a Python float, got {type(fastemit_lambda).__name__}")
    if fastemit_lambda < 0:
        raise ValueError(f"fastemit_lambda: expected a value >= 0, got {fastemit_lambda}")

    for name, value in (
        ("targets", targets),
        (frame_lengths_name, frame_lengths),
        ("target_lengths", target_lengths),
    ):
        dtype = jnp.result_type(value)
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"{name}: expected an integer dtype, got {dtype}")
    if jnp.ndim(targets) != 2 or jnp.shape(targets) != (batch, max_target):
        raise ValueError(
            f"targets: expected shape (B, U) = ({batch}, {max_target}) to match the U + 1 = {max_target + 1} "
            f"axis, got {tuple(jnp.shape(targets))}"
        )
    for name, value in ((frame_lengths_name, frame_lengths), ("target_lengths", target_lengths)):
        if tuple(jnp.shape(value)) != (batch,):
            raise ValueError(f"{name}: expected shape (B,) = ({batch},), got {tuple(jnp.shape(value))}")

    if _checks.is_concrete(frame_lengths):
        lengths = np.asarray(frame_lengths)
        if lengths.size and (lengths.min() < 1 or lengths.max() > max_frames):
            raise ValueError(
                f"{frame_lengths_name}: expected values in [1, {max_frames}] (T = {max_frames}), "
                f"got min {lengths.min()}, max {lengths.max()}"
            )
    if _checks.is_concrete(target_lengths):
        lengths = np.asarray(target_lengths)
        if lengths.size and (lengths.min() < 0 or lengths.max() > max_target):
            raise ValueError(
                f"target_lengths: expected values in [0, {max_target}] (U = {max_target}), "
                f"got min {lengths.min()}, max {lengths.max()}"
            )


def _check_target_values(targets: Any, target_lengths: Any, vocab: int, blank: int) -> None:
    """Check the labels inside each sequence's target length (padding may hold anything)."""
    if not (_checks.is_concrete(targets) and _checks.is_concrete(target_lengths)):
        return
    labels = np.asarray(targets)
    lengths = np.asarray(target_lengths)
    inside = np.arange(labels.shape[1])[None, :] < lengths[:, None]
    used = labels[inside]
    if used.size == 0:
        return
    if used.min() < 0 or used.max() >= vocab:
        raise ValueError(f"targets: expected values in [0, {vocab}), got min {used.min()}, max {used.max()}")
    if np.any(used == blank):
        b, u = np.argwhere(inside & (labels == blank))[0]
        raise ValueError(
            f"targets: expected no blank label ({blank}) within target_lengths, got it at targets[{b}, {u}]"
        )


def _resolve_blank(blank: int, vocab: int) -> int:
    if not -vocab <= blank < vocab:
        raise ValueError(f"blank: expected a value in [{-vocab}, {vocab}), got {blank}")
    return int(blank) % vocab


def _compute_dtype(dtype: Any) -> Any:
    """float64 stays float64 (when x64 is on); every narrower float is accumulated in float32."""
    return jnp.float64 if dtype == jnp.float64 else jnp.float32


# --------------------------------------------------------------------------------------------------
# Lattice recursion
# --------------------------------------------------------------------------------------------------


def _skew(x: Array, fill: float) -> Array:
    """(B, T, U1) -> (N, B, U1) with N = T + U1 - 1: out[n, b, u] = x[b, n - u, u] (``fill`` off the grid)."""
    _, frames, nodes = x.shape
    diagonals = jnp.arange(frames + nodes - 1)[:, None]
    u = jnp.arange(nodes)[None, :]
    t = diagonals - u
    gathered = x[:, jnp.clip(t, 0, frames - 1), u]  # (B, N, U1)
    gathered = jnp.where(((t >= 0) & (t < frames))[None], gathered, fill)
    return jnp.moveaxis(gathered, 1, 0)


def _unskew(x: Array, frames: int) -> Array:
    """(N, B, U1) -> (B, T, U1): out[b, t, u] = x[t + u, b, u]."""
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


def _arc_occupancies(
    blank_log_probs: Array,
    label_log_probs: Array,
    frame_lengths: Array,
    target_lengths: Array,
    fastemit_lambda: float,
) -> tuple[Array, Array, Array, Array]:
    """Forward-backward on the lattice.

    Args:
        blank_log_probs: (B, T, U + 1) log-probability of blank at node (t, u).
        label_log_probs: (B, T, U + 1) log-probability of target label u at node (t, u) (last column unused).
        frame_lengths: (B,) valid frames per sequence, in [1, T].
        target_lengths: (B,) valid labels per sequence, in [0, U].
        fastemit_lambda: FastEmit weight; scales the label-arc occupancies by 1 + lambda.

    Returns:
        costs: (B,) negative log-likelihood of each sequence.
        blank_occupancy: (B, T, U + 1) posterior probability of taking the blank arc leaving (t, u).
        label_occupancy: (B, T, U + 1) same for the label arc (times 1 + fastemit_lambda).
        valid: (B, T, U + 1) bool, the nodes of each sequence's lattice.
    """
    _, frames, nodes = blank_log_probs.shape
    t = jnp.arange(frames)[None, :, None]
    u = jnp.arange(nodes)[None, None, :]
    last_frame = (frame_lengths - 1)[:, None, None]
    last_label = target_lengths[:, None, None]
    valid = (t <= last_frame) & (u <= last_label)
    blank_lp = jnp.where(valid, blank_log_probs, -jnp.inf)
    label_lp = jnp.where(valid & (u < last_label), label_log_probs, -jnp.inf)

    blank_diag = _skew(blank_lp, -jnp.inf)  # (N, B, U1)
    label_diag = _skew(label_lp, -jnp.inf)
    terminal = _skew((t == last_frame) & (u == last_label), False)

    # alpha[t, u] = logaddexp(alpha[t - 1, u] + blank[t - 1, u], alpha[t, u - 1] + label[t, u - 1])
    def alpha_step(prev, arcs):
        blank_prev, label_prev = arcs
        current = jnp.logaddexp(prev + blank_prev, _shift_down(prev + label_prev))
        return current, current

    alpha_first = jnp.where(jnp.arange(nodes) == 0, 0.0, -jnp.inf).astype(blank_lp.dtype)
    alpha_first = jnp.broadcast_to(alpha_first, blank_diag.shape[1:])
    _, alpha_rest = jax.lax.scan(alpha_step, alpha_first, (blank_diag[:-1], label_diag[:-1]))
    alpha = _unskew(jnp.concatenate([alpha_first[None], alpha_rest], axis=0), frames)

    # beta[t, u] = logaddexp(beta[t + 1, u] + blank[t, u], beta[t, u + 1] + label[t, u]); at the last
    # node of each sequence beta = blank (the final blank ends the alignment).
    def beta_step(following, arcs):
        blank_here, label_here, is_terminal = arcs
        current = jnp.logaddexp(following + blank_here, _shift_up(following) + label_here)
        current = jnp.where(is_terminal, blank_here, current)
        return current, current

    beta_last = jnp.full(blank_diag.shape[1:], -jnp.inf, blank_lp.dtype)
    _, beta_diag = jax.lax.scan(beta_step, beta_last, (blank_diag, label_diag, terminal), reverse=True)
    beta = _unskew(beta_diag, frames)

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


def _label_index(targets: Array, nodes: int, vocab: int) -> Array:
    """(B, U) targets -> (B, U + 1) label index per node, clipped into [0, V) (padding is masked later)."""
    padded = jnp.concatenate([targets, jnp.zeros((targets.shape[0], 1), targets.dtype)], axis=1)[:, :nodes]
    return jnp.clip(padded, 0, vocab - 1).astype(jnp.int32)


def _gather_log_probs(
    logits: Array, label_index: Array, blank: int, fused_log_softmax: bool, dtype: Any
) -> tuple[Array, Array, Array]:
    """(B, T, U1, V) logits -> log-probs of blank, of the next label, softmax denominators (B, T, U1)."""
    x = logits.astype(dtype)
    if fused_log_softmax:
        # log-sum-exp by hand: jax.nn.logsumexp's extra inf handling costs a full pass over the joint.
        peak = jnp.max(x, axis=-1)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        denominator = peak + jnp.log(jnp.sum(jnp.exp(x - peak[..., None]), axis=-1))
    else:
        denominator = jnp.zeros(x.shape[:-1], dtype)
    blank_lp = x[..., blank] - denominator
    label_lp = jnp.take_along_axis(x, label_index[:, None, :, None], axis=-1)[..., 0] - denominator
    return blank_lp, label_lp, denominator


def _logits_gradient(
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
    """d cost / d logits for a block of frames (B, Tc, U1, V), clamped per sequence, times the cotangent."""
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
# Full joint
# --------------------------------------------------------------------------------------------------


def _costs_from_logits_fwd(logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit):
    dtype = _compute_dtype(logits.dtype)
    label_index = _label_index(targets, logits.shape[2], logits.shape[3])
    blank_lp, label_lp, denominator = _gather_log_probs(logits, label_index, blank, fused, dtype)
    costs, blank_occ, label_occ, valid = _arc_occupancies(
        blank_lp, label_lp, logit_lengths, target_lengths, fastemit
    )
    return costs, (logits, denominator, label_index, blank_occ, label_occ, valid)


def _costs_from_logits_bwd(blank, clamp, fused, fastemit, residuals, cost_cotangent):
    logits, denominator, label_index, blank_occ, label_occ, valid = residuals
    grad = _logits_gradient(
        logits, denominator, label_index, blank_occ, label_occ, valid, cost_cotangent, blank, clamp, fused
    )
    return grad, None, None, None


def _costs_from_logits_impl(logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit):
    return _costs_from_logits_fwd(
        logits, targets, logit_lengths, target_lengths, blank, clamp, fused, fastemit
    )[0]


_costs_from_logits = jax.custom_vjp(_costs_from_logits_impl, nondiff_argnums=(4, 5, 6, 7))
_costs_from_logits.defvjp(_costs_from_logits_fwd, _costs_from_logits_bwd)


def _reduce(costs: Array, reduction: str) -> Array:
    if reduction == "mean":
        return jnp.mean(costs)
    if reduction == "sum":
        return jnp.sum(costs)
    return costs


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
    targets, logit_lengths, target_lengths = map(_as_array, (targets, logit_lengths, target_lengths))
    if frames < 1 or nodes < 1 or vocab < 2:
        raise ValueError(f"logits: expected T >= 1, U + 1 >= 1 and V >= 2, got shape {tuple(logits.shape)}")
    _check_common(
        batch=batch,
        max_frames=frames,
        max_target=nodes - 1,
        targets=targets,
        frame_lengths=logit_lengths,
        target_lengths=target_lengths,
        frame_lengths_name="logit_lengths",
        blank=blank,
        clamp=clamp,
        reduction=reduction,
        fastemit_lambda=fastemit_lambda,
    )
    blank = _resolve_blank(blank, vocab)
    _check_target_values(targets, target_lengths, vocab, blank)

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
    return _reduce(costs, reduction)


# --------------------------------------------------------------------------------------------------
# From encodings, chunked over T
# --------------------------------------------------------------------------------------------------


def _joiner_vocab(
    joiner: Callable[..., Array], inputs: tuple, expected: tuple, shape: str, takes: str = ""
) -> int:
    """V of the logits ``joiner(*inputs)`` (traced, not run); a clear error unless they are floating and of shape
    ``expected + (V,)`` (``shape`` names it, ``takes`` what the joiner was given)."""
    out = jax.eval_shape(joiner, *inputs)
    if len(out.shape) != 4 or tuple(out.shape[:3]) != expected or not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"joiner: expected floating logits of shape {shape} = {expected + ('V',)}{takes}, "
            f"got {tuple(out.shape)} {out.dtype}"
        )
    return out.shape[-1]


def _chunked_joiner_costs(
    joiner: Callable[..., Array],
    num_chunks: int,
    chunk_size: int,
    frames: int,
    log_probs: Callable[..., tuple[Array, Array, Array]],
    lattice: Callable[..., tuple[Array, Any]],
    logits_gradient: Callable[..., Array],
) -> Callable[..., Array]:
    """Custom-VJP ``costs_fn(chunked, whole, chunk_data, shared) -> costs (B,)`` of an RNN-T loss whose logits
    ``joiner(*chunked_chunk, *whole)`` are formed ``chunk_size`` frames at a time, never all at once. Used by
    :func:`rnnt_loss_from_encodings` (the full lattice) and ``rnnt_loss_pruned`` (windows of it).

    chunked: tuple of (B, Tp, ...) joiner inputs taken chunk by chunk (Tp = num_chunks * chunk_size), with
        gradients. whole: tuple of joiner inputs every chunk sees (the closure-converted joiner's constants,
        perhaps an encoding), with gradients summed over chunks in at least float32. chunk_data: tuple of
        (B, Tp, ...) arrays without gradients, split like ``chunked``. shared: a pytree without gradients.

    The forward pass keeps each chunk's ``log_probs(logits, chunk_data_chunk, shared) -> (blank, label,
    denominator)`` and the lattice's ``lattice(blank, label, shared) -> (costs, occupancies)`` (over the first
    ``frames`` frames; occupancies a tuple of (B, Tp, ...) arrays, 0 on padded frames). The backward pass
    recomputes each chunk's logits, forms ``logits_gradient(logits, denominator_chunk, occupancies_chunk,
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
                logits_gradient(logits, denominator_chunk, occupancies_chunk, data, shared, cost_cotangent)
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


def _encodings_costs(
    joiner: Callable[..., Array],
    num_chunks: int,
    chunk_size: int,
    frames: int,
    blank: int,
    clamp: float,
    fastemit: float,
) -> Callable[..., Array]:
    """``_chunked_joiner_costs`` over the full lattice: chunked (source,), whole (target, *consts), shared
    (label_index (B, U + 1), source_lengths, target_lengths); ``joiner`` is closure-converted: (source_chunk,
    target_encodings, *consts) -> logits (B, Tc, U + 1, V)."""

    def log_probs(logits, data, shared):
        return _gather_log_probs(logits, shared[0], blank, True, _compute_dtype(logits.dtype))

    def lattice(blank_lp, label_lp, shared):
        _, source_lengths, target_lengths = shared
        costs, *occupancies = _arc_occupancies(blank_lp, label_lp, source_lengths, target_lengths, fastemit)
        pad = [(0, 0), (0, num_chunks * chunk_size - frames), (0, 0)]
        return costs, tuple(jnp.pad(x, pad) for x in occupancies)  # blank, label, valid

    def logits_gradient(logits, denominator, occupancies, data, shared, cost_cotangent):
        blank_occ, label_occ, valid = occupancies
        return _logits_gradient(
            logits, denominator, shared[0], blank_occ, label_occ, valid, cost_cotangent, blank, clamp, True
        )

    return _chunked_joiner_costs(joiner, num_chunks, chunk_size, frames, log_probs, lattice, logits_gradient)


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
    for name, value in (("source_encodings", source_encodings), ("target_encodings", target_encodings)):
        if not hasattr(value, "shape") or not hasattr(value, "dtype"):
            raise TypeError(f"{name}: expected an array, got {type(value).__name__}")
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{name}: expected a floating dtype, got {value.dtype}")
        if value.ndim != 3:
            raise ValueError(f"{name}: expected 3 dimensions, got shape {tuple(value.shape)}")
    if not callable(joiner):
        raise TypeError(f"joiner: expected a callable, got {type(joiner).__name__}")
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    batch, frames, _ = source_encodings.shape
    targets, source_lengths, target_lengths = map(_as_array, (targets, source_lengths, target_lengths))
    if target_encodings.shape[0] != batch:
        raise ValueError(
            f"target_encodings: expected batch size {batch} (as source_encodings), "
            f"got {target_encodings.shape[0]}"
        )
    nodes = target_encodings.shape[1]
    _check_common(
        batch=batch,
        max_frames=frames,
        max_target=nodes - 1,
        targets=targets,
        frame_lengths=source_lengths,
        target_lengths=target_lengths,
        frame_lengths_name="source_lengths",
        blank=blank,
        clamp=clamp,
        reduction=reduction,
        fastemit_lambda=fastemit_lambda,
    )

    chunk_size = int(min(chunk_size, frames))
    num_chunks = -(-frames // chunk_size)
    source = jnp.asarray(source_encodings)
    source = jnp.pad(source, [(0, 0), (0, num_chunks * chunk_size - frames), (0, 0)])
    target = jnp.asarray(target_encodings)
    example_chunk = source[:, :chunk_size]
    vocab = _joiner_vocab(joiner, (example_chunk, target), (batch, chunk_size, nodes), "(B, Tc, U + 1, V)")
    blank = _resolve_blank(blank, vocab)
    _check_target_values(targets, target_lengths, vocab, blank)

    converted_joiner, consts = jax.closure_convert(joiner, example_chunk, target)
    costs_fn = _encodings_costs(
        converted_joiner, num_chunks, chunk_size, frames, blank, float(clamp), float(fastemit_lambda)
    )
    shared = (
        _label_index(jnp.asarray(targets), nodes, vocab),
        jnp.clip(jnp.asarray(source_lengths), 1, frames),
        jnp.clip(jnp.asarray(target_lengths), 0, nodes - 1),
    )
    costs = costs_fn((source,), (target, *consts), (), shared)
    return _reduce(costs, reduction)
