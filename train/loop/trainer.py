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

from streamformer.rnnt import RNNT

from ..config import Config, to_dict
from .batches import batch_stream, device_batch
from .checkpoint import Checkpoints, abstract_like
from .mesh import Mesh1D
from .metrics import MetricsLog, Progress, save_json
from .preemption import PreemptionGuard
from .step import TrainState, init_state, make_optimizer, make_train_step

__all__ = ["FitResult", "NonFiniteError", "fit"]


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a NaN or Inf loss, gradient or feature."""


@dataclass
class FitResult:
    state: TrainState
    losses: dict[int, float]  # step -> training loss of that step (steps run in this call)
    skipped: int
    seconds: float
    preempted: str | None = None  # the signal that stopped training early (checkpoint saved), if any


def fit(
    config: Config,
    workdir: str | os.PathLike,
    model: RNNT,
    train_examples: list,
    bucket_frames: list[int],
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
    """Trains ``model`` on ``train_examples`` for config.loop.steps steps, resuming from the latest checkpoint
    under ``workdir`` when there is one.

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

    checkpoints = Checkpoints(workdir / "checkpoints", loop.keep_checkpoints, must_match)
    checkpoints.set_aside_damaged()
    abstract = jax.eval_shape(lambda: init_state(model, optimizer, loop.seed))
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_like(abstract, mesh.replicated))
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
    config_json = {**to_dict(config), "num_symbols": model.num_symbols}

    losses: dict[int, float] = {}
    window = {"loss": 0.0, "utterances": 0.0, "frames": 0.0, "n": 0, "time": time.perf_counter()}
    pending = None  # the previous step's metrics, read after the next step is dispatched
    preempted = None

    counts = {
        "in_a_row": int(jax.device_get(state.nonfinite_in_a_row)),
        "skipped": int(jax.device_get(state.skipped)),
    }

    def settle(step: int, metrics: dict) -> None:
        metrics = jax.device_get(metrics)
        if not bool(metrics["finite"]):
            counts["in_a_row"] += 1
            counts["skipped"] += 1
            metrics_log.write(
                {"step": step + 1, "kind": "skip", "reason": "non-finite loss, gradient or feature"}
            )
            if counts["in_a_row"] >= loop.max_nonfinite_in_a_row:
                raise NonFiniteError(
                    f"{counts['in_a_row']} steps in a row had NaN/Inf loss, gradients or "
                    f"features (the last: step {step + 1}); see {workdir / 'metrics.jsonl'}"
                )
            return
        counts["in_a_row"] = 0
        losses[step] = float(metrics["loss"])
        window["loss"] += float(metrics["loss"])
        window["utterances"] += float(metrics["utterances"])
        window["frames"] += float(metrics["frames"])
        window["n"] += 1
        if loop.log_every and (step + 1) % loop.log_every == 0 and window["n"]:
            seconds = time.perf_counter() - window["time"]
            record = {
                "step": step + 1,
                "kind": "train",
                "loss": window["loss"] / window["n"],
                "grad_norm": float(metrics["grad_norm"]),
                "lr": float(metrics["lr"]),
                "utterances_per_s": window["utterances"] / seconds,
                "audio_s_per_s": window["frames"] * 0.01 / seconds,
                "skipped": counts["skipped"],
            }
            metrics_log.write(record)
            bar.update(
                step + 1,
                f"loss {record['loss']:.3f} {record['utterances_per_s']:.1f} utt/s "
                f"{record['audio_s_per_s']:.0f}x real time",
            )
            window.update(loss=0.0, utterances=0.0, frames=0.0, n=0, time=time.perf_counter())

    started = time.perf_counter()
    guard = PreemptionGuard()
    try:
        guard.__enter__()
        if start < end:
            rows = mesh.local_rows(config.data.batch_size)  # this process builds and puts only its rows
            stream = batch_stream(
                train_examples, config, bucket_frames, model.right_context_length, start, rows=rows
            )
            for step, batch in stream:
                batch = mesh.put_batch(device_batch(batch), config.data.batch_size)
                state, metrics = train_step(state, batch)
                if pending is not None:
                    settle(*pending)
                pending = (step, metrics)
                done = step + 1
                checkpoints.seal()
                if loop.checkpoint_every and done % loop.checkpoint_every == 0 and done < end:
                    checkpoints.save(done, state, config_json)
                if on_eval is not None and loop.eval_every and done % loop.eval_every == 0 and done < end:
                    settle(*pending)
                    pending = None
                    metrics_log.write({"step": done, "kind": "eval", **on_eval(state, done)})
                if time_limit is not None and time.perf_counter() - started > time_limit and done < end:
                    metrics_log.write({"step": done, "kind": "stop", "reason": f"time limit {time_limit} s"})
                    end = done
                if done < end and guard.should_stop(done):
                    metrics_log.write({"step": done, "kind": "stop", "reason": guard.signal_name})
                    end, preempted = done, guard.signal_name
                if done >= end:
                    break
            if pending is not None:
                settle(*pending)
            checkpoints.save(end, state, config_json)
    finally:
        guard.__exit__()
        checkpoints.close()
        metrics_log.close()
        bar.close()
    return FitResult(
        state=state,
        losses=losses,
        skipped=counts["skipped"],
        seconds=time.perf_counter() - started,
        preempted=preempted,
    )
