"""Checkpoints: orbax's CheckpointManager (atomic, asynchronous saves; keeps the last N) with the run's config
stored inside every checkpoint, so that restoring into a different model fails with a clear message.

Layout: <workdir>/checkpoints/<step>/{state, config, data}. ``state`` is the TrainState pytree, ``config`` the
run's config as JSON, ``data`` the input pipeline's iterator state (grain's, as JSON: where the next batch
is), so a resumed run continues with exactly the batch it would have read. An interrupted save leaves only a
temporary folder that orbax ignores. Once a save has finished, <step>/manifest.json records every file's size
and sha256 (train.integrity); a checkpoint is verified against it before it is read, and ``set_aside_damaged``
moves damaged ones out of the way so that training resumes from the newest intact one. A checkpoint without a
manifest counts as half-written when an older one of the run has a manifest; otherwise it predates manifests
and is read unverified.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from . import integrity

__all__ = ["CheckpointMismatchError", "Checkpoints"]

logger = logging.getLogger(__name__)


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
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "config", "data")
        )
        self._unsealed: list[int] = []  # saved by this process, manifest not yet written
        self._verified: set[int] = set()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, config: dict, data: dict | None = None) -> None:
        """Starts saving ``state`` (asynchronously; ``wait`` or ``close`` to finish) with ``data``, the input
        pipeline's state; a step already saved is left as it is (a stop right after a periodic checkpoint)."""
        if step in self._unsealed or step in self.manager.all_steps():
            return
        self.seal(wait=True)
        items = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config)}
        if data is not None:
            items["data"] = ocp.args.JsonSave(data)
        args = ocp.args.Composite(**items)
        self.manager.save(step, args=args, force=True)
        self._unsealed.append(step)

    def seal(self, wait: bool = False) -> None:
        """Writes the manifest of every save of this process that has finished (``wait``: after waiting for
        the one in flight). Cheap when nothing finished: call it after every step."""
        if not self._unsealed:
            return
        if wait:
            self.manager.wait_until_finished()
        elif self.manager.is_saving_in_progress():
            return
        if jax.process_index() == 0:
            for step in self._unsealed:
                if (self.directory / str(step)).is_dir():  # not already removed by max_to_keep
                    integrity.write_manifest(self.directory / str(step))
        self._unsealed.clear()

    def verify(self, step: int) -> None:
        """Raises integrity.DamagedCheckpointError when checkpoint ``step`` is damaged or half-written."""
        if step in self._verified:
            return
        try:
            self._verify_files(step)
            self._verified.add(step)
        except integrity.DamagedCheckpointError as error:
            intact = self.newest_intact_step(below=step)
            hint = f" (the newest intact checkpoint is step {intact})" if intact is not None else ""
            raise integrity.DamagedCheckpointError(
                error.step, error.directory, error.file, error.reason + hint
            ) from None

    def _verify_files(self, step: int) -> None:
        # No manifest is a half-written save only where the run writes manifests, i.e. an older checkpoint
        # has one; without any, the checkpoint predates manifests and is read unverified (with a warning).
        if not (self.directory / str(step) / integrity.MANIFEST).exists() and not any(
            (self.directory / str(older) / integrity.MANIFEST).exists()
            for older in self.manager.all_steps()
            if older < step
        ):
            logger.warning(
                "checkpoint step %d has no %s (older format): read unverified", step, integrity.MANIFEST
            )
            return
        integrity.verify(self.directory / str(step), step)

    def newest_intact_step(self, below: int | None = None) -> int | None:
        for step in sorted(self.manager.all_steps(), reverse=True):
            if below is not None and step >= below:
                continue
            try:
                self._verify_files(step)
            except integrity.DamagedCheckpointError:
                continue
            return step
        return None

    def set_aside_damaged(self, stream=None) -> list[integrity.DamagedCheckpointError]:
        """Renames each damaged checkpoint newer than the newest intact one to <step>.damaged (orbax ignores
        it; it stays for inspection), with one warning line each; returns their errors. With several
        processes every one checks, the first renames."""
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                self._verify_files(step)
                break
            except integrity.DamagedCheckpointError as error:
                damaged.append(error)
        if not damaged:
            return damaged
        older = self.newest_intact_step(below=damaged[-1].step)
        for error in damaged:
            target = self.directory / f"{error.step}.damaged"
            if jax.process_index() == 0:
                suffix = 1
                while target.exists():
                    target, suffix = self.directory / f"{error.step}.damaged{suffix}", suffix + 1
                os.rename(self.directory / str(error.step), target)
            resume = (
                f"resuming from step {older}" if older is not None else "no intact checkpoint: starting over"
            )
            if jax.process_index() == 0:
                print(
                    f"warning: {error}; skipped (moved to {target.name}), {resume}", file=stream, flush=True
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("streamformer: damaged checkpoints set aside")
        self.manager.reload()
        return damaged

    def stored_config(self, step: int | None = None) -> dict:
        step = self._step(step)
        self.verify(step)
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
        self.verify(step)
        self.check(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        return self.manager.restore(step, args=args)["state"]

    def restore_data(self, step: int | None = None) -> dict | None:
        """The input pipeline's state saved with checkpoint ``step`` (None: the checkpoint has none)."""
        step = self._step(step)
        if not (self.directory / str(step) / "data").is_dir():
            return None
        self.verify(step)
        return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))["data"]

    def _step(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"checkpoint: no checkpoint under {self.directory}")
        return step

    def wait(self) -> None:
        self.seal(wait=True)

    def close(self) -> None:
        self.seal(wait=True)
        self.manager.close()


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """jax.ShapeDtypeStruct leaves with ``sharding``, for ``Checkpoints.restore``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
