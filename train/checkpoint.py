"""Checkpoints: orbax's CheckpointManager (atomic, asynchronous saves; keeps the last N) with the run's config
stored inside every checkpoint, so that restoring into a different model fails with a clear message.

Layout: <workdir>/checkpoints/<step>/{state, config}. ``state`` is the TrainState pytree, ``config`` the run's
config as JSON. An interrupted save leaves only a temporary folder that orbax ignores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

__all__ = ["CheckpointMismatchError", "Checkpoints"]


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by a run whose model (or tokenizer) differs from this one."""


def _differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(stored) | set(current)):
            out += _differences(stored.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    if isinstance(stored, (list, tuple)) and isinstance(current, (list, tuple)):
        stored, current = list(stored), list(current)
    return [] if stored == current else [f"{prefix[:-1]}: checkpoint {stored!r}, this run {current!r}"]


class Checkpoints:
    """The checkpoints of one run.

    Args:
        directory: where checkpoints go (created).
        keep: how many of the latest checkpoints to keep.
        must_match: the parts of the config dict that a restored checkpoint must have been written with
            (e.g. {"model": ..., "vocab_size": ...}); anything else may change between runs (e.g. lr, steps).
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, must_match: dict | None = None):
        self.directory = Path(directory).absolute()
        self.must_match = must_match or {}
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "config"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, config: dict) -> None:
        """Starts saving ``state`` (asynchronously; ``wait`` or ``close`` to finish)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config))
        self.manager.save(step, args=args, force=True)

    def stored_config(self, step: int | None = None) -> dict:
        step = self._step(step)
        return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def check(self, step: int | None = None) -> dict:
        """Raises CheckpointMismatchError when the stored config differs from ``must_match``; returns it."""
        stored = self.stored_config(step)
        problems = []
        for key, value in self.must_match.items():
            problems += _differences(stored.get(key, "<absent>"), value, f"{key}.")
        if problems:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(self._step(step))} was written with another configuration "
                "(use another workdir, or the same settings):\n  " + "\n  ".join(problems)
            )
        return stored

    def restore(self, abstract_state: Any, step: int | None = None) -> Any:
        """The state of checkpoint ``step`` (default: the latest), laid out as ``abstract_state`` (a pytree of
        jax.ShapeDtypeStruct with shardings), after checking the stored config."""
        step = self._step(step)
        self.check(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return self.manager.restore(step, args=args)["state"]

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint under {self.directory}")
        return step

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """jax.ShapeDtypeStruct leaves with ``sharding``, for ``Checkpoints.restore``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
