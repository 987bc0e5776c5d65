"""TensorBoard event files through tensorboardX (in the ``train`` extra; optional: without it, only the
JSON-lines log is written).

tensorboardX imports torch, when it is installed, only to accept torch tensors, which the trainer never
passes; importing torch costs seconds at every start (8 s measured on a loaded 2-core machine), so the import
here hides torch from tensorboardX unless torch is already loaded.
"""

from __future__ import annotations

import os
import sys

__all__ = ["summary_writer"]


def _import_tensorboardx():
    if "torch" in sys.modules:
        import tensorboardX
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` raise ImportError
        try:
            import tensorboardX
        finally:
            del sys.modules["torch"]
    return tensorboardX


def summary_writer(logdir: str | os.PathLike, purge_step: int | None = None):
    """A tensorboardX SummaryWriter on ``logdir``, or None when tensorboardX is not installed.

    purge_step: a resumed run's first step; TensorBoard then drops the events of earlier writers at and after
    it (the steps the resumed run does again), so the curves read as one run.
    """
    try:
        tensorboardx = _import_tensorboardx()
    except ImportError:
        return None
    return tensorboardx.SummaryWriter(str(logdir), purge_step=purge_step)
