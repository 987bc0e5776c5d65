"""Argument checks shared by the RNN-T losses. Messages name the argument, what was expected and what came in.

Shapes and dtypes are checked when a loss is traced; values (lengths, labels) only when they are concrete, since
a jitted function cannot raise on traced values. Shape letters: B batch, T frames, U labels (U + 1 lattice
nodes per frame), V vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks

REDUCTIONS = ("none", "mean", "sum")


def as_array(x: Any) -> Any:
    """Lists and scalars become numpy arrays (concrete, so their values can be checked); arrays pass through."""
    return x if hasattr(x, "dtype") and hasattr(x, "shape") else np.asarray(x)


def check_floating(name: str, x: Any, ndim: int, what: str) -> None:
    """``x`` is a floating array of ``ndim`` dimensions; ``what`` spells its shape, e.g. '(B, T, D)'."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name}: expected an array of shape {what}, got {type(x).__name__}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {what}, got shape {tuple(x.shape)}")


def check_positive_int(name: str, value: Any) -> None:
    """``value`` is an int >= 1 (``chunk_size``, ``prune_range``); bools are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")


def check_loss_options(*, blank: Any, reduction: Any, clamp: Any = -1.0, fastemit_lambda: Any = 0.0) -> None:
    """The options every RNN-T loss takes: ``blank`` an int, ``reduction`` one of :data:`REDUCTIONS`, ``clamp``
    and ``fastemit_lambda`` (>= 0) floats."""
    if reduction not in REDUCTIONS:
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


def check_targets_and_lengths(
    targets: Any,
    frame_lengths: Any,
    target_lengths: Any,
    shape: tuple[int, int, int],
    frame_lengths_name: str,
) -> None:
    """``targets`` (B, U), ``frame_lengths`` (B,) in [1, T] (named ``frame_lengths_name`` in errors:
    logit_lengths or source_lengths) and ``target_lengths`` (B,) in [0, U], all integer, for
    ``shape = (B, T, U)``; values are checked when concrete."""
    batch, max_frames, max_target = shape
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

    for name, value, low, high, letter in (
        (frame_lengths_name, frame_lengths, 1, max_frames, "T"),
        ("target_lengths", target_lengths, 0, max_target, "U"),
    ):
        if _checks.is_concrete(value):
            lengths = np.asarray(value)
            if lengths.size and (lengths.min() < low or lengths.max() > high):
                raise ValueError(
                    f"{name}: expected values in [{low}, {high}] ({letter} = {high}), "
                    f"got min {lengths.min()}, max {lengths.max()}"
                )


def check_target_values(targets: Any, target_lengths: Any, vocab: int, blank: int) -> None:
    """The labels inside each sequence's target length are in [0, V) and not blank (padding may hold anything)."""
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


def resolve_blank(blank: int, vocab: int) -> int:
    """The blank index in [0, V): a negative ``blank`` counts from the end (-1 is V - 1)."""
    if not -vocab <= blank < vocab:
        raise ValueError(f"blank: expected a value in [{-vocab}, {vocab}), got {blank}")
    return int(blank) % vocab


def joiner_vocab(
    joiner: Callable[..., Any], inputs: tuple, expected: tuple, shape: str, takes: str = ""
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
