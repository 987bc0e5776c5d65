"""Preemption: SIGTERM (what TPU VMs, Kubernetes and Slurm send before taking a machine away) asks training to
stop at the next step boundary, checkpoint, and exit cleanly, so the same command resumes it.

One process: a SIGTERM handler sets a flag; the loop asks ``should_stop(step)`` after every step. Several
processes (jax.distributed): JAX's preemption service catches the notice on whichever host gets it and agrees
on one step for every host (``multihost_utils.reached_preemption_sync_point``), so all hosts save the same
step; the handler here then only remembers that a signal came.
"""

from __future__ import annotations

import signal
import threading

import jax

__all__ = ["PreemptionGuard"]


class PreemptionGuard:
    """Context manager: while active, SIGTERM requests a stop instead of killing the process.

    ``should_stop(step)``: True once a stop was requested (on every process at the same step when there are
    several). ``signal_name``: the signal that asked, for messages. Outside the main thread (where Python
    cannot install handlers) the guard is inert.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is threading.main_thread() and jax.process_count() == 1:
            for number in self.signals:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()

    def _handle(self, number: int, frame) -> None:
        self.requested = number

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.requested).name if self.requested is not None else "preemption notice"

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested is not None
