"""The training loop (``fit``): one jitted train step over a TrainState, data parallel over all devices, with
checkpoints, a JSON-lines metrics log, a progress line and a preemption guard.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax

from streamformer.transducer import RNNT

from ..config import Config, LoopConfig, to_dict
from .batches import device_batch
from .checkpoint import Checkpoints, abstract_like
from .loader import MemorySource, TrainBatches, batch_iterator, bucket_frames_for, state_for_checkpoint
from .mesh import Mesh1D
from .metrics import MetricsLog, Progress, save_json
from .preemption import PreemptionGuard
from .step import TrainState, init_state, make_optimizer, make_train_step

__all__ = ["FitResult", "MetricsWindow", "NonFiniteError", "fit"]


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a NaN or Inf loss, gradient or feature."""


@dataclass
class FitResult:
    state: TrainState
    losses: dict[int, float]  # step -> training loss of that step (steps run in this call)
    skipped: int
    seconds: float
    preempted: str | None = None  # the signal that stopped training early (checkpoint saved), if any
    data_wait: float = 0.0  # seconds the steps waited for their batches


def fit(
    config: Config,
    workdir: str | os.PathLike,
    model: RNNT,
    source,
    bucket_frames: list[int] | None = None,
    *,
    blank: int,
    must_match: dict,
    stop_at: int | None = None,
    on_eval: Callable[[TrainState, int], dict] | None = None,
    records: list[dict] = (),
    progress: bool = True,
    time_limit: float | None = None,
    devices=None,
) -> FitResult:
    """Trains ``model`` for config.loop.steps steps on ``source`` (a list of Examples, a
    ``loader.MemorySource`` or a ``corpora.shards.ShardSource``), resuming from the latest checkpoint under
    ``workdir`` when there is one (its train state and its data iterator's position).

    bucket_frames: the length buckets (default ``loader.bucket_frames_for`` the source's lengths).
    must_match: config parts a checkpoint must share to be resumed (see Checkpoints).
    stop_at: stop (after checkpointing) at this step, before config.loop.steps (for tests and time limits).
    on_eval: called every loop.eval_every steps with (state, step); its dict is logged.
    records: logged once at the start (e.g. the data screening's report, kind "data").
    time_limit: seconds; training stops (with a checkpoint) at the first step past it.
    """
    loop = config.loop
    workdir = Path(workdir)
    lead = jax.process_index() == 0
    mesh = Mesh1D(devices)
    mesh.check_batch_size(config.data.batch_size)
    optimizer = make_optimizer(config.optim, loop.steps)
    train_step = mesh.jit_train_step(make_train_step(model, optimizer, config, blank))

    if isinstance(source, list):
        source = MemorySource(source, config.data.groups)
    if bucket_frames is None:
        bucket_frames = bucket_frames_for(config, source.lengths[source.usable])
    rows = mesh.local_rows(config.data.batch_size)  # this process builds and puts only its rows
    train_batches = TrainBatches(source, config, bucket_frames, model.right_context_length, rows=rows)
    if hasattr(source, "report"):
        records = [*records, source.report()]

    checkpoints = Checkpoints(workdir / "checkpoints", loop.keep_checkpoints, must_match)
    checkpoints.set_aside_damaged()
    abstract = jax.eval_shape(lambda: init_state(model, optimizer, loop.seed))
    data_state = None
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_like(abstract, mesh.replicated))
        data_state = checkpoints.restore_data(int(state.step))
    else:
        state = jax.jit(lambda: init_state(model, optimizer, loop.seed), out_shardings=mesh.replicated)()
    start = int(state.step)
    if lead:  # written once the checkpoint (if any) proved compatible
        save_json(workdir / "config.json", to_dict(config))
    metrics_log = MetricsLog(workdir / "metrics.jsonl", resume_step=start, enabled=lead)
    for record in records:
        metrics_log.write({"step": start, **record})
    end = min(loop.steps, stop_at) if stop_at is not None else loop.steps
    bar = Progress(end, start, enabled=progress and lead)
    window = MetricsWindow(metrics_log, bar, loop, state, workdir / "metrics.jsonl")
    config_json = {**to_dict(config), "num_symbols": model.num_symbols}
    started, preempted = time.perf_counter(), None
    try:
        with PreemptionGuard() as guard:
            if start < end:
                data = config.data
                stream = batch_iterator(
                    train_batches, loop.steps, start, threads=data.loader_threads,
                    workers=data.loader_workers, prefetch=data.prefetch, state=data_state,
                )  # fmt: skip
                expected = start
                while True:
                    waited = time.perf_counter()
                    step, batch = next(stream)
                    if step != expected:
                        raise RuntimeError(
                            f"data: the input pipeline gave step {step}'s batch at step {expected}"
                        )
                    window.waited(time.perf_counter() - waited, batch.unreadable)
                    state, metrics = train_step(
                        state, mesh.put_batch(device_batch(batch), config.data.batch_size)
                    )
                    window.add(step, metrics)  # settles the previous step, now that this one is dispatched
                    done = expected = step + 1
                    checkpoints.seal()
                    if _every(loop.checkpoint_every, done) and done < end:
                        checkpoints.save(
                            done, state, config_json, state_for_checkpoint(stream, done, data.loader_workers)
                        )
                    if on_eval is not None and _every(loop.eval_every, done) and done < end:
                        window.flush()
                        metrics_log.write({"step": done, "kind": "eval", **on_eval(state, done)})
                    if time_limit is not None and time.perf_counter() - started > time_limit and done < end:
                        metrics_log.write(
                            {"step": done, "kind": "stop", "reason": f"time limit {time_limit} s"}
                        )
                        end = done
                    if done < end and guard.should_stop(done):  # every step: several hosts agree on one
                        metrics_log.write({"step": done, "kind": "stop", "reason": guard.signal_name})
                        end, preempted = done, guard.signal_name
                    if done >= end:
                        break
                window.flush()
                checkpoints.save(
                    end, state, config_json, state_for_checkpoint(stream, end, data.loader_workers)
                )
                stream.close()  # stops the reader threads (and workers) building batches past the end
    finally:
        source.close()
        checkpoints.close()
        metrics_log.close()
        bar.close()
    return FitResult(
        state=state,
        losses=window.losses,
        skipped=window.skipped,
        seconds=time.perf_counter() - started,
        preempted=preempted,
        data_wait=window.wait_total,
    )


def _every(period: int, step: int) -> bool:
    return bool(period) and step % period == 0


class MetricsWindow:
    """The training metrics between two log lines: each step's loss (``losses``), the window's mean loss and
    throughput written every ``loop.log_every`` steps (and shown on the progress line), and the steps skipped
    as non-finite (``skipped``; ``loop.max_nonfinite_in_a_row`` of them in a row raise NonFiniteError).

    A step's metrics are read one step late (``add`` settles the step before), so reading them never stalls
    the device; ``flush`` settles the last one.
    """

    def __init__(self, log: MetricsLog, bar: Progress, loop: LoopConfig, state: TrainState, log_path: Path):
        self.log, self.bar, self.loop, self.log_path = log, bar, loop, log_path
        self.losses: dict[int, float] = {}
        self.skipped = int(jax.device_get(state.skipped))
        self.in_a_row = int(jax.device_get(state.nonfinite_in_a_row))
        self.pending: tuple[int, dict] | None = None
        self.wait_total, self.unreadable = 0.0, 0
        self._start_window()

    def _start_window(self) -> None:
        self.loss_sum, self.utterances, self.frames, self.steps = 0.0, 0.0, 0.0, 0
        self.data_wait = 0.0
        self.window_started = time.perf_counter()

    def waited(self, seconds: float, unreadable: int = 0) -> None:
        """The step waited ``seconds`` for its batch, ``unreadable`` of whose records could not be read."""
        self.data_wait += seconds
        self.wait_total += seconds
        self.unreadable += unreadable

    def add(self, step: int, metrics: dict) -> None:
        self.flush()
        self.pending = (step, metrics)

    def flush(self) -> None:
        if self.pending is not None:
            step, metrics = self.pending
            self.pending = None
            self._settle(step, jax.device_get(metrics))

    def _settle(self, step: int, metrics: dict) -> None:
        if not bool(metrics["finite"]):
            self.in_a_row += 1
            self.skipped += 1
            self.log.write(
                {"step": step + 1, "kind": "skip", "reason": "non-finite loss, gradient or feature"}
            )
            if self.in_a_row >= self.loop.max_nonfinite_in_a_row:
                raise NonFiniteError(
                    f"{self.in_a_row} steps in a row had NaN/Inf loss, gradients or features (the last: step "
                    f"{step + 1}); see {self.log_path}"
                )
            return
        self.in_a_row = 0
        self.losses[step] = float(metrics["loss"])
        self.loss_sum += float(metrics["loss"])
        self.utterances += float(metrics["utterances"])
        self.frames += float(metrics["frames"])
        self.steps += 1
        if _every(self.loop.log_every, step + 1):
            self._write(step + 1, metrics)

    def _write(self, step: int, metrics: dict) -> None:
        seconds = time.perf_counter() - self.window_started
        record = {
            "step": step,
            "kind": "train",
            "loss": self.loss_sum / self.steps,
            "grad_norm": float(metrics["grad_norm"]),
            "lr": float(metrics["lr"]),
            "utterances_per_s": self.utterances / seconds,
            "audio_s_per_s": self.frames * 0.01 / seconds,
            "skipped": self.skipped,
            "data_wait_fraction": self.data_wait / seconds,
            "unreadable_records": self.unreadable,
        }
        self.log.write(record)
        self.bar.update(
            step,
            f"loss {record['loss']:.3f} {record['utterances_per_s']:.1f} utt/s "
            f"{record['audio_s_per_s']:.0f}x real time",
        )
        self._start_window()
