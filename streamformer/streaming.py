"""What Emformer and ConvEmformer share: the streaming state, the segment layout of the forward pass and of one
streaming step, and the whole-utterance stream as a ``lax.scan``.

Layout letters: B batch, T utterance frames, S segment_length, R right_context_length, L left_context_length,
M max_memory_size, N = ceil(T / S) segments, D input_dim, K the convolution kernel (ConvEmformer).

Padding rule: every sequence behaves as if it were alone. Sequence b has ``lengths[b]`` valid frames, followed
directly by its R right-context frames; whatever lies beyond is padding and is never read into a valid output.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from . import _checks
from ._nn import Dtype
from .attention import SegmentMasks, gather_windows
from .encoder_config import EncoderConfig
from .layout import SegmentLayout
from .state import select_streams


@flax.struct.dataclass
class EmformerState:
    """Streaming state of an Emformer or ConvEmformer: each layer's own state, and the streams' positions.

    Shapes never change from step to step, so one compiled step serves every segment; slots not yet filled are
    masked in attention rather than sliced away. Streams lie on axis 0 of every array.

    layers: one state per layer: ``EmformerLayerState`` (memory (B, M, D), left_context_keys and
        left_context_values (B, L, D)) or, for ConvEmformer, ``ConvEmformerLayerState`` (those and conv_cache
        (B, K - 1, D)).
    positions: (B,) int32 frames consumed by each stream so far (a multiple of S); streams keep their own.

    The properties ``memory``, ``left_context_keys``, ``left_context_values`` (and ``conv_cache`` for
    ConvEmformer) stack a field over layers, (num_layers, B, ...), torchaudio's per-layer view.
    """

    layers: tuple
    positions: jax.Array

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]

    def _stacked(self, name: str) -> jax.Array:
        if not all(hasattr(layer, name) for layer in self.layers):
            raise AttributeError(f"this encoder's layers keep no {name}")
        return jnp.stack([getattr(layer, name) for layer in self.layers])

    memory = property(lambda self: self._stacked("memory"))
    left_context_keys = property(lambda self: self._stacked("left_context_keys"))
    left_context_values = property(lambda self: self._stacked("left_context_values"))
    conv_cache = property(lambda self: self._stacked("conv_cache"))


def masked_segment_mean(segments: jax.Array, valid_frames: jax.Array) -> jax.Array:
    """segments (B, N, S, D), valid_frames (B, N) -> (B, N, D) mean over each segment's valid frames (as
    torchaudio's ceil-mode average pooling averages a partial last segment over its own frames)."""
    S = segments.shape[2]
    keep = (jnp.arange(S)[None, None, :] < valid_frames[..., None])[..., None]
    total = jnp.sum(jnp.where(keep, segments, 0), axis=2)
    return total / jnp.maximum(valid_frames, 1)[..., None].astype(total.dtype)


def segment_masks(positions: jax.Array, valid_frames: jax.Array, config: EncoderConfig) -> SegmentMasks:
    """Which keys N segments see, continuing streams at ``positions`` (B,) (0 for the forward pass).

    ``valid_frames`` (B, N) counts each segment's valid frames (``SegmentLayout.valid_frames``). Memory slot j
    of segment n is bank entry n + j of [the state's M slots, the memory vectors of segments 0 .. N - 2];
    frame slot j is entry n S + j of [the state's L left-context frames, the N S segment frames]. State slots
    are filled once the stream has seen that much (ceil(position / S) memory vectors, position frames).
    """
    layout, L, M = config.layout, config.left_context_length, config.max_memory_size
    S, (B, N) = layout.segment_length, valid_frames.shape
    filled_memory = jnp.minimum(M, layout.num_segments(positions))
    filled_left = jnp.minimum(L, positions)
    memory_filled = jnp.concatenate(
        [jnp.arange(M)[None, :] >= M - filled_memory[:, None], jnp.ones((B, N - 1), bool)], 1
    )
    segment_frames = (jnp.arange(S)[None, None, :] < valid_frames[..., None]).reshape(B, N * S)
    frames_filled = jnp.concatenate([jnp.arange(L)[None, :] >= L - filled_left[:, None], segment_frames], 1)
    return SegmentMasks(
        memory=gather_windows(memory_filled[..., None], jnp.arange(N), M)[..., 0],
        frames=gather_windows(frames_filled[..., None], layout.segment_starts(N), L + S)[..., 0],
        valid_frames=valid_frames,
    )


class StreamingEncoder(nn.Module):
    """Base of Emformer and ConvEmformer. A subclass declares torchaudio's constructor arguments as its fields,
    its ``layer_class`` and, where an argument's name differs from ``EncoderConfig``'s, ``config_names``.

    ``config`` gathers the fields into one ``EncoderConfig`` (validated when the module is built), and that is
    what each layer receives: ``layer_class(config, layer_index)``, called as ``layer(utterance, right_context,
    memory, state, masks, deterministic)`` on N segments, returning ``(utterance, right_context, memory,
    state)``, and declaring its own fresh state with ``init_state(batch_size, dtype)``.
    """

    layer_class: ClassVar[type[nn.Module]]
    #: torchaudio's argument name -> EncoderConfig's field name, where they differ.
    config_names: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        self.config  # noqa: B018 -- builds (so validates) the config now, not at the first call
        super().__post_init__()

    @classmethod
    def _config_arguments(cls) -> dict[str, str]:
        """EncoderConfig field -> this encoder's argument, for every config field the constructor takes."""
        config_fields = {field.name for field in dataclasses.fields(EncoderConfig)}
        renamed = {
            field.name: cls.config_names.get(field.name, field.name) for field in dataclasses.fields(cls)
        }
        return {config: argument for argument, config in renamed.items() if config in config_fields}

    @property
    def config(self) -> EncoderConfig:
        """The encoder's hyper-parameters (its constructor arguments) as one validated ``EncoderConfig``."""
        return EncoderConfig(
            **{config: getattr(self, arg) for config, arg in self._config_arguments().items()}
        )

    @classmethod
    def from_config(cls, config: EncoderConfig, **module_arguments):
        """The encoder of ``config`` (``module_arguments``: dtype, param_dtype, name, parent)."""
        if not isinstance(config, EncoderConfig):
            raise TypeError(f"config: expected an EncoderConfig, got {type(config).__name__}")
        arguments = {arg: getattr(config, name) for name, arg in cls._config_arguments().items()}
        if config.is_conv_emformer != ("kernel_size" in arguments):
            raise ValueError(
                f"config: {cls.__name__} expected kernel_size "
                f"{'an integer' if 'kernel_size' in arguments else 'None'}, got {config.kernel_size!r} "
                "(streamformer.transducer.encoder_for(config) builds the encoder a config describes)"
            )
        return cls(**arguments, **module_arguments)

    def setup(self):
        config = self.config
        self.emformer_layers = [
            self.layer_class(config, index, dtype=self.dtype, param_dtype=self.param_dtype)
            for index in range(config.num_layers)
        ]

    @property
    def layout(self) -> SegmentLayout:
        """The segment layout (S, R) of this encoder."""
        return self.config.layout

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, jax.Array]:
        """Arguments for ``model.init(rng, *model.example_inputs())``: one segment with its right context."""
        S, R = self.config.segment_length, self.config.right_context_length
        return jnp.zeros((1, S + R, self.config.input_dim), jnp.float32), jnp.array([S], jnp.int32)

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> EmformerState:
        """A fresh streaming state for ``batch_size`` streams: what each layer declares, and positions 0.
        Needs no parameters (callable on the unbound module)."""
        _checks.positive_int("batch_size", batch_size)
        config = self.config
        layers = (self.layer_class(config, index, parent=None) for index in range(config.num_layers))
        return EmformerState(
            layers=tuple(layer.init_state(batch_size, dtype) for layer in layers),
            positions=jnp.zeros((batch_size,), jnp.int32),
        )

    def _check_input(self, input, lengths, frames_what: str) -> None:
        _checks.array_shape(
            "input", input, (None, None, self.config.input_dim), f"(B, {frames_what}, input_dim)"
        )
        _checks.floating_array("input", input)
        _checks.array_shape("lengths", lengths, (input.shape[0],), "(B,) matching input's batch")
        _checks.integer_array("lengths", lengths)

    def _check_utterance(self, input, lengths) -> int:
        """Checks whole-utterance arguments; returns T."""
        self._check_input(input, lengths, "T + right_context_length")
        R = self.config.right_context_length
        T = input.shape[1] - R
        if T < 1:
            raise ValueError(
                f"input: expected at least right_context_length + 1 = {R + 1} frames, got {input.shape[1]}"
            )
        _checks.lengths_in_range("lengths", lengths, 0, T)
        return T

    def _check_state(self, state: EmformerState, batch_size: int) -> None:
        if not isinstance(state, EmformerState):
            raise TypeError(f"state: expected an EmformerState (or None), got {type(state).__name__}")
        _checks.same_structure(
            "state",
            state,
            self.init_state(batch_size),
            what=(
                f"for this model (num_layers {self.config.num_layers}, batch {batch_size}, M, L, kernel_size - 1, "
                "input_dim): a state from another configuration or batch size"
            ),
        )

    # -- the layers ----------------------------------------------------------------------------------------

    def _encode(self, segments, right_context, valid_frames, state: EmformerState, deterministic: bool):
        """Runs the layers over N segments continuing ``state``: segments (B, N, S, D), right_context
        (B, N, R, D), valid_frames (B, N) of each segment. Returns the output segments (B, N, S, D) and the
        state after them (each stream advanced by N S frames)."""
        N = segments.shape[1]
        masks = segment_masks(state.positions, valid_frames, self.config)
        memory = masked_segment_mean(segments, masks.valid_frames)  # layer 0's memory: means of raw segments
        layer_states = []
        for layer, layer_state in zip(self.emformer_layers, state.layers):
            segments, right_context, memory, layer_state = layer(
                segments, right_context, memory, layer_state, masks, deterministic
            )
            layer_states.append(layer_state)
        new = EmformerState(
            layers=tuple(layer_states), positions=state.positions + N * self.config.segment_length
        )
        return segments, jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new, state)

    # -- forward -------------------------------------------------------------------------------------------

    def __call__(self, input: jax.Array, lengths: jax.Array, deterministic: bool = True):
        """Training and non-streaming forward over whole utterances.

        Args:
            input: (B, T + R, D) utterance frames right-padded with the right context: sequence b's R
                right-context frames are the R frames right after its ``lengths[b]`` valid frames.
            lengths: (B,) valid utterance frames per sequence (0 <= lengths <= T).
            deterministic: False applies dropout, drawing from the 'dropout' rng.

        Returns:
            output (B, T, D), and output_lengths (B,) (= lengths).
        """
        T = self._check_utterance(input, lengths)
        B = input.shape[0]
        dtype = self.dtype or input.dtype
        lengths = lengths.astype(jnp.int32)
        segments, right_context, valid = self.layout.split(input.astype(dtype), lengths)
        output, _ = self._encode(segments, right_context, valid, self.init_state(B, dtype), deterministic)
        return output.reshape(B, -1, output.shape[-1])[:, :T], lengths

    # -- streaming -----------------------------------------------------------------------------------------

    def infer(self, input: jax.Array, lengths: jax.Array, state: EmformerState | None = None):
        """One streaming step: the next segment of every stream.

        Args:
            input: (B, S + R, D) each stream's next S frames followed by their R right-context frames.
            lengths: (B,) valid frames in ``input``, right context included (torchaudio's convention): S + R for
                a full segment, fewer for an utterance's last partial segment, R or less for a stream with no
                new frames, whose state is left unchanged.
            state: from the previous step, or None for fresh streams.

        Returns:
            output (B, S, D), output_lengths (B,) = max(lengths - R, 0), and the new state.
        """
        S, R = self.config.segment_length, self.config.right_context_length
        self._check_input(input, lengths, "segment_length + right_context_length")
        if input.shape[1] != S + R:
            raise ValueError(
                f"input: expected segment_length + right_context_length = {S + R} frames per step, got {input.shape[1]}"
            )
        _checks.lengths_in_range("lengths", lengths, 0, S + R)
        B = input.shape[0]
        state = self.init_state(B, input.dtype) if state is None else state
        self._check_state(state, B)
        x = input.astype(self.dtype or input.dtype)
        lengths = lengths.astype(jnp.int32)
        valid = self.layout.chunk_valid_frames(lengths)
        output, stepped = self._encode(x[:, None, :S], x[:, None, S:], valid[:, None], state, True)
        return output[:, 0], jnp.maximum(lengths - R, 0), select_streams(valid > 0, stepped, state)

    def stream(self, input: jax.Array, lengths: jax.Array, state: EmformerState | None = None):
        """Streams whole utterances segment by segment, as one ``lax.scan`` over ``infer``.

        Takes the forward pass's arguments and gives its outputs on every valid frame, plus the final state.

        Args:
            input: (B, T + R, D) as for ``__call__``.
            lengths: (B,) valid utterance frames per sequence.
            state: to continue from (None: fresh streams).

        Returns:
            output (B, T, D), output_lengths (B,) (= lengths), and the state after each stream's last segment.
        """
        T = self._check_utterance(input, lengths)
        B = input.shape[0]
        lengths = lengths.astype(jnp.int32)
        chunks, chunk_lengths = self.layout.chunks(input, lengths)

        state = self.init_state(B, input.dtype) if state is None else state
        self._check_state(state, B)
        variables, model = self.variables, self.clone(parent=None)

        def step(carry, chunk):
            output, _, carry = model.apply(variables, chunk[0], chunk[1], carry, method=type(self).infer)
            return carry, output

        state, outputs = jax.lax.scan(step, state, (jnp.swapaxes(chunks, 0, 1), chunk_lengths.T))
        output = jnp.swapaxes(outputs, 0, 1).reshape(B, -1, outputs.shape[-1])[:, :T]
        return output, lengths, state
