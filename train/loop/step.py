"""The model, the optimizer and one pure train step: what ``fit`` jits and runs.

``build_model`` turns the config into the transducer; ``make_optimizer`` is gradient clipping and Adam(W) on
torchaudio's warm-up schedule; ``make_train_step`` returns ``train_step(state, batch) -> (state, metrics)``,
a pure function of a ``TrainState`` that skips (and counts) steps with non-finite values. ``ctc_losses`` is
the auxiliary CTC head's loss (``optim.ctc_weight``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from streamformer.losses import pruned_rnnt_loss, rnnt_loss_from_encodings
from streamformer.transducer import (
    RNNT,
    joiner_fn,
    pruned_joiner_fn,
    with_ctc_head,
    with_simple_loss_projections,
)

from ..config import Config, ModelConfig, OptimConfig
from .batches import spec_augment

__all__ = [
    "TrainState",
    "build_model",
    "ctc_losses",
    "init_state",
    "learning_rate_schedule",
    "make_eval_loss",
    "make_loss_fn",
    "make_optimizer",
    "make_train_step",
]


def build_model(
    config: ModelConfig, num_symbols: int, *, simple_loss_projections: bool = False, ctc_head: bool = False
) -> RNNT:
    """The transducer of ``config`` with ``num_symbols`` outputs (blank included); with the pruned RNN-T
    loss's two projections when ``simple_loss_projections`` (``optim.loss == "pruned"``) and the auxiliary
    CTC head when ``ctc_head`` (``optim.ctc_weight > 0``)."""
    model = RNNT.from_config(config.transducer(num_symbols), dtype=config.compute_dtype())
    model = with_simple_loss_projections(model) if simple_loss_projections else model
    return with_ctc_head(model) if ctc_head else model


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


def ctc_losses(
    logits: jax.Array, logit_lengths: jax.Array, targets: jax.Array, target_lengths: jax.Array, blank: int
) -> jax.Array:
    """Per-sequence CTC losses (B,) of logits (B, T, V) with valid frames logit_lengths (B,) for targets
    (B, U) with valid tokens target_lengths (B,) (``optax.ctc_loss``, computed in float32). A sequence with
    fewer frames than its targets need (tokens plus repeated neighbours) has no CTC path: its loss is 0, as
    torch's ``zero_infinity``, instead of optax's huge finite stand-in."""
    T, U = logits.shape[1], targets.shape[1]
    logit_paddings = (jnp.arange(T)[None] >= logit_lengths[:, None]).astype(jnp.float32)
    valid = jnp.arange(U)[None] < target_lengths[:, None]
    losses = optax.ctc_loss(
        logits.astype(jnp.float32), logit_paddings, targets, (~valid).astype(jnp.float32), blank_id=blank
    )
    repeats = jnp.sum((targets[:, 1:] == targets[:, :-1]) & valid[:, 1:], axis=1)
    return jnp.where(logit_lengths >= target_lengths + repeats, losses, 0.0)


def make_loss_fn(model: RNNT, config: Config, blank: int) -> Callable:
    """``loss_fn(params, batch, rng, deterministic, step=None) -> (objective, (loss_sum, count))``; the
    objective is the RNN-T loss summed ("sum") or averaged ("mean") over the batch's valid rows. With
    ``optim.loss == "pruned"`` the objective is the warmed-up mix of the simple and pruned losses (``step``:
    the training step, None: warm-up over) and loss_sum sums the pruned RNN-T losses. With
    ``optim.ctc_weight`` > 0 each sequence's objective adds that weight x its CTC loss (``ctc_losses``);
    loss_sum stays the transducer's."""
    optim, data = config.optim, config.data
    if optim.loss not in ("full", "pruned"):
        raise ValueError(f"optim.loss: expected 'full' or 'pruned', got {optim.loss!r}")
    if not optim.ctc_weight >= 0:
        raise ValueError(f"optim.ctc_weight: expected a number >= 0, got {optim.ctc_weight!r}")
    if optim.ctc_weight > 0 and model.ctc_head is None:
        raise ValueError("optim.ctc_weight: > 0 needs the CTC head: build_model(..., ctc_head=True)")
    if optim.loss == "pruned" and model.simple_loss is None:
        raise ValueError(
            'optim.loss: "pruned" needs the simple-loss projections: build_model(..., '
            "simple_loss_projections=True)"
        )

    def loss_fn(params, batch, rng, deterministic: bool, step=None):
        augment_key, dropout_key = jax.random.split(rng)
        features, lengths = batch["features"], batch["feature_lengths"]
        if data.spec_augment and not deterministic:
            features = spec_augment(augment_key, features, lengths, **data.spec_augment_arguments())
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
        if optim.ctc_weight > 0:
            logits = model.apply(variables, sources, method=RNNT.ctc_logits)
            ctc = ctc_losses(logits, jnp.maximum(source_lengths, 1), targets, target_lengths, blank)
            objectives = objectives + optim.ctc_weight * ctc
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
