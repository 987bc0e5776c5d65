"""State pytrees that declare their batch (stream) axis, and the one set of functions that act per stream.

Every streaming state in streamformer (encoder layers, the predictor, greedy and beam search) is a
``flax.struct.dataclass`` whose array fields say which axis holds the streams: ``batch_field(axis)``, or a plain
field for axis 0. A field holding a nested state either inherits that state's own declarations or, given
``batch_field(axis)``, overrides them for all of its leaves (a beam search stacks predictor states of K beams
under a new leading stream axis, say).

With that, one function freezes some streams while others move (``select_streams``), one picks streams by index
(``take_streams``), and one starts streams afresh (``reset_streams``), for any of these states or a tree of them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import flax.struct
import jax
import jax.numpy as jnp

__all__ = ["batch_field", "batch_axes", "select_streams", "take_streams", "reset_streams", "push_frames"]

Tree = TypeVar("Tree")


def batch_field(axis: int = 0, **kwargs) -> Any:
    """A state field whose streams lie on ``axis`` (for every leaf below it)."""
    return flax.struct.field(metadata={"batch_axis": axis}, **kwargs)


def batch_axes(tree: Any) -> Any:
    """A pytree of ints shaped like ``tree``: the stream axis of each array leaf.

    Dataclass fields declare it with ``batch_field``; undeclared fields of a nested dataclass use that
    dataclass's declarations; any other leaf has its streams on axis 0.
    """
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        changes = {}
        for field in dataclasses.fields(tree):
            if not field.metadata.get("pytree_node", True):
                continue
            value = getattr(tree, field.name)
            axis = field.metadata.get("batch_axis")
            changes[field.name] = (
                jax.tree_util.tree_map(lambda _, a=axis: a, value) if axis is not None else batch_axes(value)
            )
        return dataclasses.replace(tree, **changes)
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        return type(tree)(batch_axes(value) for value in tree)
    if isinstance(tree, dict):
        return {key: batch_axes(value) for key, value in tree.items()}
    return jax.tree_util.tree_map(lambda _: 0, tree)


def select_streams(mask: jax.Array, new: Tree, old: Tree) -> Tree:
    """Per stream (``mask`` (B,) bool): ``new`` where True, ``old`` elsewhere, for any state tree."""

    def pick(axis, a, b):
        shape = [1] * a.ndim
        shape[axis] = -1
        return jnp.where(mask.reshape(shape), a, b)

    return jax.tree_util.tree_map(pick, batch_axes(new), new, old)


def take_streams(tree: Tree, index: jax.Array) -> Tree:
    """The streams ``index`` (N,) int of a state tree, in that order (N may differ from B)."""
    return jax.tree_util.tree_map(lambda axis, x: jnp.take(x, index, axis=axis), batch_axes(tree), tree)


def reset_streams(state: Tree, mask: jax.Array, fresh: Tree | None = None) -> Tree:
    """``state`` with the streams where ``mask`` (B,) is True replaced by ``fresh`` (default: zeros, the fresh
    encoder state), so a new utterance can take over a slot of a running batch."""
    if fresh is None:
        fresh = jax.tree_util.tree_map(jnp.zeros_like, state)
    return select_streams(jnp.asarray(mask), fresh, state)


def push_frames(buffer: jax.Array, new: jax.Array) -> jax.Array:
    """A fixed-size buffer (B, P, D) of the newest frames, newest last, after appending ``new`` (B, N, D):
    the last P frames of [buffer, new]. P = 0 gives the empty buffer back."""
    if buffer.shape[1] == 0:
        return buffer
    joined = jnp.concatenate([buffer, new.astype(buffer.dtype)], axis=1)
    return joined[:, joined.shape[1] - buffer.shape[1] :]
