"""Argument checks shared by the models. Messages name the argument, what was expected and what came in.

Shapes are checked when a function is traced; values (lengths, token ids) only when they are concrete, since a
jitted function cannot raise on traced values.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def one_of(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def array_shape(name: str, x, expected: Sequence[int | None], what: str) -> None:
    """``expected`` holds sizes, or None for any size; ``what`` spells the expected shape, e.g. '(B, T, D)'."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: expected an array of shape {what}, got {type(x).__name__}")
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise ValueError(
            f"{name}: expected shape {what} = {tuple('*' if e is None else e for e in expected)}, "
            f"got {tuple(shape)}"
        )


def integer_array(name: str, x) -> None:
    if not jnp.issubdtype(jnp.asarray(x).dtype if not hasattr(x, "dtype") else x.dtype, jnp.integer):
        raise TypeError(
            f"{name}: expected an integer array, got dtype {getattr(x, 'dtype', type(x).__name__)}"
        )


def floating_array(name: str, x) -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating-point array, got dtype {x.dtype}")


def lengths_in_range(name: str, lengths, low: int, high: int) -> None:
    """Checks low <= lengths <= high when ``lengths`` is concrete."""
    if not is_concrete(lengths):
        return
    values = np.asarray(lengths)
    bad = values[(values < low) | (values > high)]
    if bad.size:
        raise ValueError(f"{name}: expected values in [{low}, {high}], got {bad.tolist()}")


def same_structure(name: str, got, expected, what: str) -> None:
    """Checks that pytree ``got`` has ``expected``'s structure and leaf shapes; the error names the first leaf
    that differs (its path), both shapes and ``what`` the expected value is."""
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten_with_path(expected)
    if got_tree != want_tree:
        raise ValueError(f"{name}: expected the structure {want_tree} {what}, got {got_tree}")
    for (path, a), (_, b) in zip(got_leaves, want_leaves):
        if tuple(a.shape) != tuple(b.shape):
            leaf = jax.tree_util.keystr(path[-1:]).lstrip(".")
            where = f" (at {jax.tree_util.keystr(path[:-1]).lstrip('.')})" if len(path) > 1 else ""
            raise ValueError(
                f"{name}: {leaf} has shape {tuple(a.shape)}{where}, expected {tuple(b.shape)} {what}"
            )
