"""Training metrics: a JSON-lines log (``MetricsLog``, also written to TensorBoard), the progress line
(``Progress``) and ``save_json``.

TensorBoard event files go through tensorboardX (in the ``train`` extra; optional: without it, only the
JSON-lines log is written).

tensorboardX imports torch, when it is installed, only to accept torch tensors, which the trainer never
passes; importing torch costs seconds at every start (8 s measured on a loaded 2-core machine), so the import
here hides torch from tensorboardX unless torch is already loaded.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from streamformer.io import atomic_write_text

__all__ = ["MetricsLog", "Progress", "save_json", "summary_writer"]


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


class MetricsLog:
    """Metrics as JSON lines (one object per record, appended whole), and TensorBoard when tensorboardX is
    installed. On resume, records past the restored step are dropped so the log reads as one run."""

    def __init__(self, path: str | os.PathLike, resume_step: int = 0, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if record.get("step", 0) <= resume_step:
                    kept.append(line + "\n")
            atomic_write_text(self.path, "".join(kept))
        purge = resume_step + 1 if resume_step else None  # TensorBoard drops what a resumed run redoes
        self.writer = summary_writer(self.path.parent / "tensorboard", purge_step=purge)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        if self.writer is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.writer.add_scalar(f"{record.get('kind', 'train')}/{key}", value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Progress:
    """A one-line progress display on stderr (rewritten in place on a terminal, one line per update else)."""

    def __init__(self, total: int, start: int, stream=None, enabled: bool = True):
        stream = stream or sys.stderr  # looked up now: sys.stderr may have been replaced since import
        self.total, self.start, self.stream, self.enabled = total, start, stream, enabled
        self.started = time.perf_counter()
        self.tty = getattr(stream, "isatty", lambda: False)()

    def update(self, step: int, text: str) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        done = step - self.start
        eta = elapsed / done * (self.total - step) if done else float("nan")
        width = 20
        filled = int(width * step / max(self.total, 1))
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total} {text} "
            f"{_clock(elapsed)}<{_clock(eta)}"
        )
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def save_json(path: str | os.PathLike, blob: Any) -> None:
    atomic_write_text(path, json.dumps(blob, indent=2, sort_keys=True) + "\n")
