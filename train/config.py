"""Run configuration: frozen dataclasses, presets, ``--set key=value`` overrides, JSON round trip.

A run is described by one ``Config`` (model, optimizer, data, loop). Presets are plain Python below; the
command line picks one and overrides fields: ``--set model.transformer_num_layers=2 --set optim.lr=1e-3``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

import jax.numpy as jnp

from streamformer.transducer import TransducerConfig

__all__ = [
    "Config",
    "DataConfig",
    "LoopConfig",
    "ModelConfig",
    "OptimConfig",
    "PRESETS",
    "apply_overrides",
    "from_dict",
    "preset",
    "to_dict",
]


@dataclass(frozen=True)
class ModelConfig(TransducerConfig):
    """The transducer: streamformer's ``TransducerConfig`` (torchaudio's ``emformer_rnnt_model`` keywords, with
    its defaults, emformer_rnnt_base's), plus what a run adds:

    kind: "emformer" or "conv_emformer" (ConvEmformer transcriber; only then is transformer_kernel_size used).
    num_symbols: output vocabulary V including blank; 0 means the tokenizer's vocabulary size + 1.
    dtype: computation dtype, "float32" or "bfloat16" (parameters and the loss stay float32).
    weights (from TransducerConfig): "float32" only; training, evaluation and checkpoints use float32 weights,
    quantised ones are made from a trained checkpoint (``python -m train export --quantize int8``,
    ``streamformer.quantize``).
    """

    num_symbols: int = 0
    transformer_kernel_size: int = 8
    kind: str = "emformer"
    dtype: str = "float32"

    def __post_init__(self):
        # Not TransducerConfig's checks: num_symbols 0 waits for the tokenizer, and the kernel size counts only
        # for kind "conv_emformer". transducer() builds the TransducerConfig, which checks every field.
        if self.weights != "float32":
            raise ValueError(
                f"model.weights: expected 'float32' (training and checkpoints hold float32 weights), got "
                f"{self.weights!r}; quantise a trained checkpoint instead: python -m train export --quantize "
                f"{self.weights} (or streamformer.quantize)"
            )

    @property
    def encoder(self) -> str:
        return self.kind

    def transducer(self, num_symbols: int) -> TransducerConfig:
        """The library's config of this model with ``num_symbols`` outputs (blank included)."""
        if self.kind not in ("emformer", "conv_emformer"):
            raise ValueError(f"model.kind: expected 'emformer' or 'conv_emformer', got {self.kind!r}")

        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(TransducerConfig)}
        values.update(
            num_symbols=num_symbols,
            transformer_kernel_size=self.transformer_kernel_size if self.kind == "conv_emformer" else None,
        )
        return TransducerConfig(**values)

    def compute_dtype(self):
        """The dtype the modules compute in (None: float32, as their inputs)."""
        dtypes = {"float32": None, "bfloat16": jnp.bfloat16}
        if self.dtype not in dtypes:
            raise ValueError(f"model.dtype: expected 'float32' or 'bfloat16', got {self.dtype!r}")
        return dtypes[self.dtype]


@dataclass(frozen=True)
class OptimConfig:
    """Adam with linear warm-up, then constant ("constant"), cosine ("cosine") or exponential ("exponential")
    decay to ``final_lr_ratio`` * lr at the last step; gradients clipped by global norm.

    torchaudio's LibriSpeech recipe: Adam(5e-4, betas (0.9, 0.999), eps 1e-8), 10k warm-up steps then
    constant, gradient clipping at 10, RNN-T loss summed over the batch with clamp 1.0.

    loss: "full" (the exact RNN-T loss, memory-efficient path, ``loss_clamp`` and ``loss_chunk_frames``
        apply) or "pruned" (k2/icefall's pruned RNN-T loss: the model gains the two simple-loss projections).
    Pruned: ``prune_range`` label positions per frame; the objective is ``simple_scale * simple +
    pruned_scale * pruned`` where, as icefall's zipformer recipe, over the first ``loss_warmup_steps`` steps
    simple_scale falls linearly from 1 to ``simple_loss_scale`` and pruned_scale rises from 0.1 to 1 (the
    ranges come from the simple loss, which must learn first); ``lm_only_scale`` and ``am_only_scale``
    smooth the simple loss.

    ctc_weight: > 0 adds ``ctc_weight`` x the CTC loss (``optax.ctc_loss``, blank the transducer's) of an
        auxiliary head on the encoder output to each sequence's objective (the model gains the head,
        ``streamformer.transducer.with_ctc_head``); 0: no head, the objective of the transducer alone.
    """

    lr: float = 5e-4
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 10000
    decay: str = "constant"
    final_lr_ratio: float = 0.05
    clip_norm: float = 10.0
    loss_reduction: str = "sum"
    loss_clamp: float = 1.0
    loss_chunk_frames: int = 0
    loss: str = "full"
    prune_range: int = 5
    simple_loss_scale: float = 0.5
    loss_warmup_steps: int = 2000
    lm_only_scale: float = 0.25
    am_only_scale: float = 0.0
    ctc_weight: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    """Where utterances come from and how they become batches.

    train, dev, test: "synth" (the embedded synthesized dataset) or a path: a LibriSpeech-layout folder, a
        JSON-lines manifest ({"audio": path, "text": ...} per line) or a shard folder (``python -m train
        prepare``; training then reads it from disk as it goes, and the run takes its tokenizer and stats).
    synth_sizes: utterances in the synthesized train, dev and test splits; synth_seed: its seed.
    vocab_size: sentencepiece BPE pieces (the tokenizer is trained on the train transcripts unless
        tokenizer is a path to a .model file).
    global_stats: path of a global_stats.json; empty: computed from the train features.
    batch_size: utterances per step (global, over all devices); num_buckets: static batch shapes by length.
    bucketing: how the bucket sizes are chosen (``loop.batches.make_buckets``): "quantiles" (equally full
        buckets) or "padding" (the sizes that compute the fewest padded frames, each bucket holding at least a
        batch; with a long tail of lengths the quantiles pad a quarter of the batches to the longest one).
    spec_augment: apply torchaudio's recipe masks (frequency masks, time masks) to training batches; the
        next five fields are ``loop.batches.spec_augment``'s arguments of the same names.
    strict: an unusable utterance (undecodable, empty or silent audio, a transcript the tokenizer cannot
        encode) or a bad shard is an error; by default it is skipped, named in the log and counted in the
        metrics.
    groups: with a shard folder (train = a folder ``python -m train prepare`` made), shard i belongs to group
        i % groups and rows [k B / groups, (k + 1) B / groups) of every batch come from group k, so each
        process reads only the shards of its rows: a multiple of the number of processes, and a divisor of
        batch_size. It shapes the batch plan: keep it when resuming, and across layouts that must agree.
    loader_threads / loader_workers / prefetch: grain's reader threads, worker processes (0: none) and the
        batches built ahead of the step (``loop.loader.batch_iterator``).
    """

    train: str = "synth"
    dev: str = "synth"
    test: str = "synth"
    synth_sizes: tuple[int, int, int] = (3000, 200, 200)
    synth_seed: int = 0
    vocab_size: int = 64
    tokenizer: str = ""
    global_stats: str = ""
    batch_size: int = 32
    num_buckets: int = 3
    bucketing: str = "quantiles"
    spec_augment: bool = True
    num_freq_masks: int = 2
    freq_mask_width: int = 27
    num_time_masks: int = 2
    time_mask_width: int = 100
    max_time_mask_fraction: float = 0.2
    strict: bool = False
    groups: int = 1
    loader_threads: int = 2
    loader_workers: int = 0
    prefetch: int = 4

    def spec_augment_arguments(self) -> dict:
        """The keyword arguments of ``loop.batches.spec_augment`` this config sets."""
        return {name: getattr(self, name) for name in SPEC_AUGMENT_FIELDS}


SPEC_AUGMENT_FIELDS = (
    "num_freq_masks",
    "freq_mask_width",
    "num_time_masks",
    "time_mask_width",
    "max_time_mask_fraction",
)


@dataclass(frozen=True)
class LoopConfig:
    """The training loop.

    steps: optimizer steps in total (skipped non-finite steps count). seed: of params, dropout, data order.
    log_every / eval_every / checkpoint_every: in steps (0: never, except a checkpoint at the end).
    keep_checkpoints: the last N checkpoints are kept. max_nonfinite_in_a_row: stop after that many skipped
    steps in a row.
    """

    steps: int = 1000
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_nonfinite_in_a_row: int = 20


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


def _tiny() -> Config:
    """A small Emformer RNN-T (0.6 M parameters) that learns the synthesized dataset on 2 CPU cores.

    Tuned for the main job (benchmarks/training.md): 8000 training utterances and dropout 0.1 (3000 without
    dropout overfit), no SpecAugment, segments of 320 ms with 160 ms look-ahead (segment 32 and right context 16
    frames; 160 + 80 ms gave 10.3 % test WER instead of 2.9 %), Adam 3e-3 with cosine decay, 2000 steps.
    """
    return Config(
        model=ModelConfig(
            encoding_dim=128,
            segment_length=32,
            right_context_length=16,
            time_reduction_input_dim=32,
            time_reduction_stride=4,
            transformer_num_heads=4,
            transformer_ffn_dim=256,
            transformer_num_layers=3,
            transformer_dropout=0.1,
            transformer_left_context_length=30,
            symbol_embedding_dim=128,
            num_lstm_layers=1,
            lstm_dropout=0.1,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=100, decay="cosine", loss_reduction="mean"),
        data=DataConfig(synth_sizes=(8000, 200, 200), vocab_size=48, batch_size=32, spec_augment=False),
        loop=LoopConfig(steps=2000, log_every=10, checkpoint_every=500, eval_every=0),
    )


def _base() -> Config:
    """torchaudio's emformer_rnnt_base and its LibriSpeech recipe (4096 BPE pieces, Adam 5e-4, warm-up)."""
    return Config(
        optim=OptimConfig(loss="pruned"),
        data=DataConfig(vocab_size=4096, batch_size=64, num_buckets=8),
        loop=LoopConfig(steps=200_000, checkpoint_every=2000, eval_every=10_000, log_every=50),
    )


def _conv_tiny() -> Config:
    tiny = _tiny()
    return dataclasses.replace(tiny, model=dataclasses.replace(tiny.model, kind="conv_emformer"))


def _speech() -> Config:
    """A small Emformer RNN-T (0.7 M parameters; the Emformer's width is time_reduction_input_dim x stride =
    128) for real speech on a few CPU cores: the espeak-ng corpus (``main --data espeak``,
    train/corpora/espeak.py) or LibriSpeech. Batch 32 (8 never left the blank-only stage), Adam 2e-3 with 300
    warm-up steps, the pruned loss (1.7x the steps a minute of the full loss here, the same WER per step), an
    auxiliary CTC head of weight 0.3 (3 % slower a step, dev WER 72.0 % against 74.1 % after 9 minutes),
    bucket sizes of least padding (1.55x the steps a minute of length-quantile buckets on the espeak corpus,
    the same WER per step), a cosine decay over 10,300 steps: about what 2 idle cores run in the job's 60
    minutes (~172 steps a minute in the screening runs; the hour from a fresh clone ran ~190 and ended the
    schedule at 58 minutes). Width 192 learnt no more per
    step and is 1.45x slower a step. A longer run should raise loop.steps (the cosine decay spans them).
    Figures: BENCHMARKS.md, Real speech (benchmarks/speech_recipe.md)."""
    return Config(
        model=ModelConfig(
            encoding_dim=128,
            segment_length=32,
            right_context_length=16,
            time_reduction_input_dim=32,
            time_reduction_stride=4,
            transformer_num_heads=4,
            transformer_ffn_dim=384,
            transformer_num_layers=3,
            transformer_dropout=0.1,
            transformer_left_context_length=30,
            symbol_embedding_dim=128,
            num_lstm_layers=1,
            lstm_dropout=0.1,
        ),
        optim=OptimConfig(
            lr=2e-3,
            warmup_steps=300,
            decay="cosine",
            loss_reduction="mean",
            loss="pruned",
            loss_warmup_steps=500,
            ctc_weight=0.3,
        ),
        data=DataConfig(vocab_size=64, batch_size=32, num_buckets=4, bucketing="padding", spec_augment=False),
        loop=LoopConfig(steps=10300, log_every=10, checkpoint_every=500, eval_every=500),
    )


PRESETS = {"tiny": _tiny, "conv_tiny": _conv_tiny, "base": _base, "speech": _speech}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]()


def to_dict(config: Config) -> dict:
    """The config as JSON-ready dicts (a run's config.json, its checkpoints' config). ``model.weights`` is left
    out: a run's weights are always float32 (``ModelConfig`` refuses others), and leaving it out keeps the
    checkpoints of earlier runs, written before the field existed, matching this one."""
    blob = dataclasses.asdict(config)
    blob["model"].pop("weights")
    return blob


def _convert(value, annotation, where: str):
    """Converts a JSON value (or a --set string) to the field's annotated type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, str):
            value = json.loads(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{where}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_convert(v, a, where) for v, a in zip(value, args, strict=True))
    try:
        if annotation is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return value.lower() in ("true", "1")
            return bool(value)
        if annotation is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            return float(value)
        if annotation is str:
            return str(value)
    except ValueError:
        raise ValueError(f"{where}: expected a {annotation.__name__}, got {value!r}") from None
    raise TypeError(f"{where}: unsupported field type {annotation}")


def _replace(obj, updates: dict, where: str):
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        if key not in names:
            raise ValueError(f"{where}: unknown key {key!r}; expected one of {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected a mapping, got {value!r}")
            changes[key] = _replace(current, value, f"{where}.{key}")
        else:
            changes[key] = _convert(value, hints[key], f"{where}.{key}")
    return dataclasses.replace(obj, **changes)


def from_dict(blob: dict, base: Config | None = None) -> Config:
    """A Config from a (possibly partial) dict such as ``to_dict``'s; missing keys keep ``base``'s values."""
    return _replace(base or Config(), blob, "config")


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    """Applies "section.key=value" strings, e.g. "model.transformer_num_layers=2", "optim.lr=1e-3"."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ValueError(
                f"--set: expected 'section.key=value' (sections model, optim, data, loop), got {item!r}"
            )
        config = _replace(config, {parts[0]: {parts[1]: value.strip()}}, "--set")
    return config
