"""The training loop: one pure, jitted train step over a TrainState, data parallel over all devices, with
checkpoints, a JSON-lines metrics log and a progress line.

Read top to bottom: the model and optimizer from the config, the state, the step, the loop.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from streamformer.io import atomic_write_text
from streamformer.rnnt import RNNT, joiner_fn, pruned_joiner_fn, with_simple_loss_projections
from streamformer.rnnt_loss import rnnt_loss_from_encodings
from streamformer.rnnt_loss_pruned import pruned_rnnt_loss
from train import data as data_lib
from train.checkpoint import Checkpoints, abstract_like
from train.config import Config, ModelConfig, OptimConfig, to_dict
from train.preemption import PreemptionGuard
from train.tensorboard import summary_writer

__all__ = [
    "TrainState",
    "build_model",
    "make_optimizer",
    "init_state",
    "make_train_step",
    "Mesh1D",
    "fit",
    "MetricsLog",
    "NonFiniteError",
]


# ----------------------------------------------------------------------------------------------------------
# Model and optimizer


def build_model(config: ModelConfig, num_symbols: int, *, simple_loss_projections: bool = False) -> RNNT:
    """The transducer of ``config`` with ``num_symbols`` outputs (blank included); with the pruned RNN-T
    loss's two projections when ``simple_loss_projections`` (``optim.loss == "pruned"``)."""
    model = RNNT.from_config(config.transducer(num_symbols), dtype=config.compute_dtype())
    return with_simple_loss_projections(model) if simple_loss_projections else model


def learning_rate_schedule(config: OptimConfig, total_steps: int) -> optax.Schedule:
    """torchaudio's WarmupLR (lr * min(1, (count + 1) / warmup_steps): the first update already moves), then
    constant, cosine or exponential decay from warmup_steps to total_steps, ending at lr * final_lr_ratio."""
    if config.decay not in ("constant", "cosine", "exponential"):
        raise ValueError(f"optim.decay: expected 'constant', 'cosine' or 'exponential', got {config.decay!r}")
    warmup = max(config.warmup_steps, 1)
    decay_steps = max(total_steps - warmup, 1)
    ratio = config.final_lr_ratio

    def schedule(count):
        warm = jnp.minimum(1.0, (count + 1) / warmup)
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        if config.decay == "cosine":
            factor = ratio + (1 - ratio) * 0.5 * (1 + jnp.cos(jnp.pi * progress))
        elif config.decay == "exponential":
            factor = ratio**progress
        else:
            factor = 1.0
        return config.lr * warm * factor

    return schedule


def make_optimizer(config: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    """Gradient clipping by global norm, then Adam (AdamW when weight_decay > 0) on the schedule."""
    schedule = learning_rate_schedule(config, total_steps)
    adam = (
        optax.adamw(schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay)
        if config.weight_decay
        else optax.adam(schedule, config.b1, config.b2, config.eps)
    )
    clip = optax.clip_by_global_norm(config.clip_norm) if config.clip_norm > 0 else optax.identity()
    return optax.chain(clip, adam)


# ----------------------------------------------------------------------------------------------------------
# State and step


@flax.struct.dataclass
class TrainState:
    """Everything a step changes; a checkpoint is exactly this.

    step: () int32, steps taken (skipped non-finite steps included): the next batch is a function of it.
    params: the model parameters.
    opt_state: the optimizer state.
    rng: (2,) uint32 raw key; step s uses fold_in(rng, s) for dropout and SpecAugment.
    skipped: () int32, steps skipped because the loss or gradients were NaN/Inf, in total.
    nonfinite_in_a_row: () int32, skipped steps since the last finite one.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped: jax.Array
    nonfinite_in_a_row: jax.Array


def init_state(model: RNNT, optimizer: optax.GradientTransformation, seed: int) -> TrainState:
    init_key, train_key = jax.random.split(jax.random.key(seed))
    params = model.init(init_key, *model.example_inputs())["params"]

    def zero():  # separate buffers: the step donates its state
        return jnp.zeros((), jnp.int32)

    return TrainState(
        step=zero(),
        params=params,
        opt_state=optimizer.init(params),
        rng=jax.random.key_data(train_key),
        skipped=zero(),
        nonfinite_in_a_row=zero(),
    )


def _pruned_losses(model: RNNT, variables, optim: OptimConfig, blank: int, step, *inputs):
    """Per-sequence (objective, pruned RNN-T loss) of the pruned path, icefall's warm-up applied."""
    sources, target_encodings, targets, source_lengths, target_lengths = inputs
    am_logits, lm_logits = model.apply(variables, sources, target_encodings, method=RNNT.simple_logits)
    simple, pruned = pruned_rnnt_loss(
        sources,
        target_encodings,
        pruned_joiner_fn(model, variables),
        am_logits,
        lm_logits,
        targets,
        source_lengths,
        target_lengths,
        prune_range=optim.prune_range,
        blank=blank,
        reduction="none",
        lm_only_scale=optim.lm_only_scale,
        am_only_scale=optim.am_only_scale,
    )
    warm = jnp.minimum(step.astype(jnp.float32) / max(optim.loss_warmup_steps, 1), 1.0)
    simple_scale = 1.0 - warm * (1.0 - optim.simple_loss_scale)
    pruned_scale = 0.1 + 0.9 * warm
    return simple_scale * simple + pruned_scale * pruned, pruned


def make_loss_fn(model: RNNT, config: Config, blank: int) -> Callable:
    """``loss_fn(params, batch, rng, deterministic, step=None) -> (objective, (loss_sum, count))``; the
    objective is the RNN-T loss summed ("sum") or averaged ("mean") over the batch's valid rows. With
    ``optim.loss == "pruned"`` the objective is the warmed-up mix of the simple and pruned losses (``step``:
    the training step, None: warm-up over) and loss_sum sums the pruned RNN-T losses."""
    optim, data = config.optim, config.data
    if optim.loss not in ("full", "pruned"):
        raise ValueError(f"optim.loss: expected 'full' or 'pruned', got {optim.loss!r}")
    if optim.loss == "pruned" and model.simple_loss is None:
        raise ValueError(
            'optim.loss: "pruned" needs the simple-loss projections: build_model(..., '
            "simple_loss_projections=True)"
        )

    def loss_fn(params, batch, rng, deterministic: bool, step=None):
        augment_key, dropout_key = jax.random.split(rng)
        features, lengths = batch["features"], batch["feature_lengths"]
        if data.spec_augment and not deterministic:
            features = data_lib.spec_augment(augment_key, features, lengths, **data.spec_augment_arguments())
        variables, rngs = {"params": params}, {"dropout": dropout_key}
        sources, source_lengths = model.apply(
            variables, features, lengths, deterministic, method=RNNT.transcribe, rngs=rngs
        )
        targets, target_lengths = batch["targets"], batch["target_lengths"]
        prefixed = jnp.concatenate([jnp.full_like(targets[:, :1], blank), targets], axis=1)
        target_encodings, _, _ = model.apply(
            variables, prefixed, target_lengths + 1, None, deterministic, method=RNNT.predict, rngs=rngs
        )
        if optim.loss == "pruned":
            objectives, losses = _pruned_losses(
                model,
                variables,
                optim,
                blank,
                jnp.asarray(optim.loss_warmup_steps if step is None else step),
                sources,
                target_encodings,
                targets,
                jnp.maximum(source_lengths, 1),
                target_lengths,
            )
        else:
            losses = objectives = rnnt_loss_from_encodings(
                sources,
                target_encodings,
                joiner_fn(model, variables),
                targets,
                jnp.maximum(source_lengths, 1),
                target_lengths,
                blank=blank,
                clamp=optim.loss_clamp,
                reduction="none",
                chunk_size=optim.loss_chunk_frames or sources.shape[1],
            )
        weights = batch["valid"].astype(jnp.float32)
        loss_sum, count = jnp.sum(losses * weights), jnp.sum(weights)
        objective_sum = jnp.sum(objectives * weights)
        objective = (
            objective_sum if optim.loss_reduction == "sum" else objective_sum / jnp.maximum(count, 1.0)
        )
        return objective, (loss_sum, count)

    return loss_fn


def make_train_step(
    model: RNNT, optimizer: optax.GradientTransformation, config: Config, blank: int
) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``, pure; jit it (``Mesh1D.jit_train_step``).

    A step whose features, loss or gradients hold NaN or Inf leaves params and opt_state unchanged and is
    counted (state.skipped, state.nonfinite_in_a_row); the step counter advances either way.
    """
    if config.optim.loss_reduction not in ("sum", "mean"):
        raise ValueError(
            f"optim.loss_reduction: expected 'sum' or 'mean', got {config.optim.loss_reduction!r}"
        )
    loss_fn = make_loss_fn(model, config, blank)
    schedule = learning_rate_schedule(config.optim, config.loop.steps)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (_, (loss_sum, count)), grads = grad_fn(state.params, batch, rng, False, state.step)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(batch["features"]))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        keep_old = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        state = TrainState(
            step=state.step + 1,
            params=keep_old(params, state.params),
            opt_state=keep_old(opt_state, state.opt_state),
            rng=state.rng,
            skipped=state.skipped + (~finite).astype(jnp.int32),
            nonfinite_in_a_row=jnp.where(finite, 0, state.nonfinite_in_a_row + 1),
        )
        metrics = {
            "loss": loss_sum / jnp.maximum(count, 1.0),
            "grad_norm": grad_norm,
            "finite": finite,
            "lr": schedule(state.step - 1),
            "utterances": count,
            "frames": jnp.sum(batch["feature_lengths"] * batch["valid"]),
        }
        return state, metrics

    return train_step


def make_eval_loss(model: RNNT, config: Config, blank: int) -> Callable:
    """``eval_loss(params, batch) -> (loss_sum, count)`` without dropout or SpecAugment."""
    loss_fn = make_loss_fn(model, config, blank)

    def eval_loss(params, batch):
        return loss_fn(params, batch, jax.random.key(0), True)[1]

    return eval_loss


# ----------------------------------------------------------------------------------------------------------
# Devices


class Mesh1D:
    """Data parallelism over every device (of every process): batches split on the "data" axis, the state
    replicated. With several processes (jax.distributed), each puts its own rows of the global batch."""

    def __init__(self, devices=None):
        devices = np.asarray(devices if devices is not None else jax.devices())
        self.mesh = Mesh(devices, ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.size = devices.size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ValueError(
                f"data.batch_size: expected a multiple of the device count {self.size}, got {batch_size}"
            )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global batch of ``batch_size`` that this process's devices hold (all of them with
        one process): the only rows this process builds."""
        self.check_batch_size(batch_size)
        spans = self.batch_sharding.addressable_devices_indices_map((batch_size,)).values()
        begin = min(span[0].indices(batch_size)[0] for span in spans)
        end = max(span[0].indices(batch_size)[1] for span in spans)
        if end - begin != batch_size // self.size * len(spans):
            raise ValueError(f"devices: this process's devices hold rows that are not contiguous: {spans}")
        return slice(begin, end)

    def put_batch(self, batch: dict[str, np.ndarray], batch_size: int | None = None) -> dict[str, jax.Array]:
        """Arrays sharded on the batch axis from numpy arrays holding either the whole global batch of
        ``batch_size`` rows (default: the rows given) or only this process's rows (``local_rows``)."""

        def put(x):
            total = batch_size or x.shape[0]
            rows = self.local_rows(total)
            local = x[rows] if x.shape[0] == total else x
            if local.shape[0] != rows.stop - rows.start:
                raise ValueError(
                    f"batch: expected {total} rows or this process's {rows.stop - rows.start}, got {x.shape[0]}"
                )
            return jax.make_array_from_process_local_data(self.batch_sharding, local, (total, *x.shape[1:]))

        return {k: put(v) for k, v in batch.items()}

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)

    def jit_train_step(self, train_step: Callable) -> Callable:
        return jax.jit(
            train_step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )


def device_batch(batch: data_lib.Batch) -> dict[str, np.ndarray]:
    return {
        "features": batch.features,
        "feature_lengths": batch.feature_lengths,
        "targets": batch.targets,
        "target_lengths": batch.target_lengths,
        "valid": batch.valid,
    }


# ----------------------------------------------------------------------------------------------------------
# Logging


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

    def __init__(self, total: int, start: int, stream=sys.stderr, enabled: bool = True):
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


# ----------------------------------------------------------------------------------------------------------
# The loop


class NonFiniteError(RuntimeError):
    """Too many steps in a row had a NaN or Inf loss, gradient or feature."""


@dataclass
class FitResult:
    state: TrainState
    losses: dict[int, float]  # step -> training loss of that step (steps run in this call)
    skipped: int
    seconds: float
    preempted: str | None = None  # the signal that stopped training early (checkpoint saved), if any


def batch_stream(
    examples,
    config: Config,
    bucket_frames: list[int],
    right_pad: int,
    start_step: int,
    pad_id: int = 0,
    rows: slice | None = None,
) -> Iterator[tuple[int, data_lib.Batch]]:
    """(step, batch) from ``start_step`` on. The batch of step s is a pure function of (seed, s): epoch
    s // batches_per_epoch, position s % batches_per_epoch of that epoch's plan. ``rows``: only these rows
    of each batch (this process's share, ``Mesh1D.local_rows``)."""
    data, seed = config.data, config.loop.seed
    lengths = [e.features.shape[0] for e in examples]
    per_epoch = len(data_lib.plan_batches(lengths, data.batch_size, bucket_frames, seed=seed, epoch=0))
    if per_epoch == 0:
        raise ValueError(
            f"data.batch_size: {data.batch_size} is more than any bucket holds "
            f"({len(examples)} training utterances in {len(bucket_frames)} buckets)"
        )
    step = start_step
    while True:
        epoch, position = divmod(step, per_epoch)
        for batch in data_lib.batches(
            examples,
            data.batch_size,
            bucket_frames,
            seed=seed,
            epoch=epoch,
            right_pad_frames=right_pad,
            target_pad_id=pad_id,
            start=position,
            rows=rows,
        ):
            yield step, batch
            step += 1


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


def save_json(path: str | os.PathLike, blob: Any) -> None:
    atomic_write_text(path, json.dumps(blob, indent=2, sort_keys=True) + "\n")
