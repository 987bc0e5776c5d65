"""What Emformer and ConvEmformer share: the streaming state, the segment layout of the forward pass and of one
streaming step, and the whole-utterance stream as a ``lax.scan``.

Layout letters: B batch, T utterance frames, S segment_length, R right_context_length, L left_context_length,
M max_memory_size, N = ceil(T / S) segments, D input_dim, K the convolution kernel (ConvEmformer).

Padding rule: every sequence behaves as if it were alone. Sequence b has ``lengths[b]`` valid frames, followed
directly by its R right-context frames; whatever lies beyond is padding and is never read into a valid output.
"""

from __future__ import annotations

import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from . import _checks
from ._nn import Dtype
from .attention import SegmentMasks


@flax.struct.dataclass
class EmformerState:
    """Streaming state of an Emformer or ConvEmformer, all layers stacked on the first axis.

    Shapes never change from step to step, so one compiled step serves every segment; slots not yet filled are
    masked in attention rather than sliced away.

    memory: (num_layers, B, M, D) the last M memory vectors each layer received, newest last.
    left_context_keys: (num_layers, B, L, D) attention keys of the last L frames each layer saw, newest last.
    left_context_values: (num_layers, B, L, D) the matching values.
    positions: (B,) int32 frames consumed by each stream so far (a multiple of S); streams keep their own.
    conv_cache: (num_layers, B, K - 1, D) ConvEmformer's convolution input over the last K - 1 frames
        (K - 1 = 0 for Emformer).
    """

    memory: jax.Array
    left_context_keys: jax.Array
    left_context_values: jax.Array
    positions: jax.Array
    conv_cache: jax.Array

    @property
    def batch_size(self) -> int:
        return self.positions.shape[0]


def select_streams(mask: jax.Array, new: EmformerState, old: EmformerState) -> EmformerState:
    """Per stream (mask (B,) bool): ``new`` where True, ``old`` elsewhere."""

    def pick(a, b):
        if a.ndim == 1:
            return jnp.where(mask, a, b)
        return jnp.where(mask[None, :, None, None], a, b)

    return jax.tree_util.tree_map(pick, new, old)


def reset_streams(state: EmformerState, mask: jax.Array) -> EmformerState:
    """Returns ``state`` with the streams where ``mask`` (B,) is True reset to a fresh start, so a new utterance
    can take over a slot of a running batch."""
    return select_streams(jnp.logical_not(mask), state, jax.tree_util.tree_map(jnp.zeros_like, state))


def masked_segment_mean(segments: jax.Array, valid_frames: jax.Array) -> jax.Array:
    """segments (B, N, S, D), valid_frames (B, N) -> (B, N, D) mean over each segment's valid frames (as
    torchaudio's ceil-mode average pooling averages a partial last segment over its own frames)."""
    S = segments.shape[2]
    keep = (jnp.arange(S)[None, None, :] < valid_frames[..., None])[..., None]
    total = jnp.sum(jnp.where(keep, segments, 0), axis=2)
    return total / jnp.maximum(valid_frames, 1)[..., None].astype(total.dtype)


def segment_chunks(
    input: jax.Array, lengths: jax.Array, segment_length: int, right_context_length: int
) -> tuple[jax.Array, jax.Array]:
    """Cuts whole utterances into the chunks a stream delivers to ``infer``, one per segment.

    Args:
        input: (B, T + R, D) as for the forward pass: each sequence's R right-context frames right after its
            ``lengths[b]`` valid frames.
        lengths: (B,) valid frames per sequence (<= T).

    Returns:
        chunks (B, N, S + R, D), N = ceil(T / S): chunk n holds frames [n S, n S + S) and then the R frames that
        follow the sequence's valid frames in it (the next segment's start, or the sequence's own right context
        after its last frame); chunk_lengths (B, N): valid frames + R, or 0 once the sequence has ended.
    """
    S, R = segment_length, right_context_length
    B, T = input.shape[0], input.shape[1] - R
    N = -(-T // S)
    x = jnp.pad(input, ((0, 0), (0, N * S - T), (0, 0)))
    segment_start = jnp.arange(N) * S
    valid_frames = jnp.clip(lengths[:, None] - segment_start[None, :], 0, S)  # (B, N)
    frames = segment_start[None, :, None] + jnp.arange(S)  # (1, N, S)
    rc_frames = (segment_start + valid_frames)[..., None] + jnp.arange(R)  # (B, N, R)
    index = jnp.concatenate([jnp.broadcast_to(frames, (B, N, S)), rc_frames], axis=-1)
    chunks = jnp.take_along_axis(x, index.reshape(B, -1)[..., None], axis=1).reshape(B, N, S + R, x.shape[-1])
    return chunks, jnp.where(valid_frames > 0, valid_frames + R, 0)


class StreamingEncoder(nn.Module):
    """Base of Emformer and ConvEmformer. Subclasses declare torchaudio's constructor arguments as fields and
    implement ``_make_layer(index)``; layers are called as
    ``layer(utterance, right_context, memory_bank, left_keys, left_values, conv_cache, masks, deterministic)`` and
    return ``(utterance, right_context, memory, keys, values, conv_cache)``."""

    # Fields every subclass declares (torchaudio's names): input_dim, num_heads, ffn_dim, num_layers,
    # segment_length, dropout, left_context_length, right_context_length, max_memory_size,
    # weight_init_scale_strategy, tanh_on_mem, negative_inf, dtype, param_dtype.

    def setup(self):
        self.emformer_layers = [self._make_layer(i) for i in range(self.num_layers)]

    # -- configuration -------------------------------------------------------------------------------------

    def _validate_config(self) -> None:
        for name in ("input_dim", "num_heads", "ffn_dim", "num_layers", "segment_length"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("left_context_length", "right_context_length", "max_memory_size"):
            _checks.positive_int(name, getattr(self, name), minimum=0)
        if self.input_dim % self.num_heads:
            raise ValueError(
                f"input_dim: expected a multiple of num_heads ({self.num_heads}), got {self.input_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        _checks.one_of(
            "weight_init_scale_strategy", self.weight_init_scale_strategy, ["depthwise", "constant", None]
        )
        if not self.negative_inf < 0:
            raise ValueError(f"negative_inf: expected a large negative number, got {self.negative_inf!r}")

    @property
    def _conv_cache_size(self) -> int:
        return 0

    def _weight_init_gain(self, layer_index: int) -> float | None:
        if self.weight_init_scale_strategy == "depthwise":
            return 1.0 / math.sqrt(layer_index + 1)
        if self.weight_init_scale_strategy == "constant":
            return 1.0 / math.sqrt(2)
        return None

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, jax.Array]:
        """Arguments for ``model.init(rng, *model.example_inputs())``: one segment with its right context."""
        S, R = self.segment_length, self.right_context_length
        return jnp.zeros((1, S + R, self.input_dim), jnp.float32), jnp.array([S], jnp.int32)

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> EmformerState:
        """A fresh streaming state for ``batch_size`` streams. Needs no parameters (callable on the unbound module)."""
        _checks.positive_int("batch_size", batch_size)
        layers, D = self.num_layers, self.input_dim
        zeros = lambda n: jnp.zeros((layers, batch_size, n, D), dtype)  # noqa: E731
        return EmformerState(
            memory=zeros(self.max_memory_size),
            left_context_keys=zeros(self.left_context_length),
            left_context_values=zeros(self.left_context_length),
            positions=jnp.zeros((batch_size,), jnp.int32),
            conv_cache=zeros(self._conv_cache_size),
        )

    @nn.nowrap
    def reset_streams(self, state: EmformerState, mask: jax.Array) -> EmformerState:
        """``state`` with the streams where ``mask`` (B,) is True set back to a fresh start."""
        return reset_streams(state, mask)

    def _check_input(self, input, lengths, frames_what: str) -> None:
        _checks.array_shape("input", input, (None, None, self.input_dim), f"(B, {frames_what}, input_dim)")
        _checks.floating_array("input", input)
        _checks.array_shape("lengths", lengths, (input.shape[0],), "(B,) matching input's batch")
        _checks.integer_array("lengths", lengths)

    def _check_state(self, state: EmformerState, batch_size: int) -> None:
        if not isinstance(state, EmformerState):
            raise TypeError(f"state: expected an EmformerState (or None), got {type(state).__name__}")
        expected = self.init_state(batch_size)
        for field in ("memory", "left_context_keys", "left_context_values", "positions", "conv_cache"):
            got, want = getattr(state, field).shape, getattr(expected, field).shape
            if got != want:
                raise ValueError(
                    f"state: {field} has shape {got}, expected {want} for this model (num_layers, batch {batch_size},"
                    " M, L, kernel_size - 1, input_dim): a state from another configuration or batch size"
                )

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
        self._check_input(input, lengths, "T + right_context_length")
        S, R, L, M = (
            self.segment_length,
            self.right_context_length,
            self.left_context_length,
            self.max_memory_size,
        )
        B, T = input.shape[0], input.shape[1] - R
        if T < 1:
            raise ValueError(
                f"input: expected at least right_context_length + 1 = {R + 1} frames, got {input.shape[1]}"
            )
        _checks.lengths_in_range("lengths", lengths, 0, T)
        dtype = self.dtype or input.dtype
        x = input.astype(dtype)
        lengths = lengths.astype(jnp.int32)
        N = -(-T // S)
        segment_start = jnp.arange(N) * S

        utterance = jnp.pad(x[:, :T], ((0, 0), (0, N * S - T), (0, 0))).reshape(B, N, S, -1)
        valid_frames = jnp.clip(lengths[:, None] - segment_start[None, :], 0, S)
        # Segment n's right context starts right after its frames, or right after the sequence's last frame.
        rc_index = (segment_start + valid_frames)[..., None] + jnp.arange(R)  # (B, N, R)
        D = x.shape[-1]
        right_context = jnp.take_along_axis(x, rc_index.reshape(B, N * R)[..., None], axis=1).reshape(
            B, N, R, D
        )

        frame_pos = segment_start[:, None] - L + jnp.arange(L + S)[None, :]  # (N, L + S)
        masks = SegmentMasks(
            memory=jnp.broadcast_to(jnp.arange(N)[:, None] - M + jnp.arange(M)[None, :] >= 0, (B, N, M)),
            frames=(frame_pos[None] >= 0) & (frame_pos[None] < lengths[:, None, None]),
            valid_frames=valid_frames,
        )
        memory = masked_segment_mean(utterance, valid_frames)  # layer 0's memory: means of the raw segments
        empty = jnp.zeros((B, L, x.shape[-1]), dtype)
        conv_cache = jnp.zeros((B, self._conv_cache_size, x.shape[-1]), dtype)
        for layer in self.emformer_layers:
            # Segment n sees memory [n - M, n): M empty slots, then the previous layer's memory outputs.
            bank = jnp.zeros((B, M, x.shape[-1]), dtype)
            if M:
                bank = jnp.concatenate([bank, memory[:, : N - 1]], axis=1)
            utterance, right_context, memory, *_ = layer(
                utterance, right_context, bank, empty, empty, conv_cache, masks, deterministic
            )
        return utterance.reshape(B, N * S, -1)[:, :T], lengths

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
        S, R, L, M = (
            self.segment_length,
            self.right_context_length,
            self.left_context_length,
            self.max_memory_size,
        )
        self._check_input(input, lengths, "segment_length + right_context_length")
        if input.shape[1] != S + R:
            raise ValueError(
                f"input: expected segment_length + right_context_length = {S + R} frames per step, got {input.shape[1]}"
            )
        _checks.lengths_in_range("lengths", lengths, 0, S + R)
        B = input.shape[0]
        state = self.init_state(B, input.dtype) if state is None else state
        self._check_state(state, B)
        dtype = self.dtype or input.dtype
        x = input.astype(dtype)
        lengths = lengths.astype(jnp.int32)
        valid = jnp.clip(lengths - R, 0, S)
        utterance, right_context = x[:, None, :S], x[:, None, S:]

        past = state.positions
        filled_memory = jnp.minimum(M, -(-past // S))
        filled_left = jnp.minimum(L, past)
        frame_slot = jnp.arange(L + S)[None, :]
        masks = SegmentMasks(
            memory=(jnp.arange(M)[None, :] >= M - filled_memory[:, None])[:, None],
            frames=jnp.where(
                frame_slot < L, frame_slot >= L - filled_left[:, None], frame_slot - L < valid[:, None]
            )[:, None],
            valid_frames=valid[:, None],
        )
        memory = masked_segment_mean(utterance, masks.valid_frames)
        new = {"memory": [], "left_context_keys": [], "left_context_values": [], "conv_cache": []}
        for index, layer in enumerate(self.emformer_layers):
            bank = state.memory[index].astype(dtype)
            layer_memory = memory
            utterance, right_context, memory, keys, values, conv_cache = layer(
                utterance,
                right_context,
                bank,
                state.left_context_keys[index],
                state.left_context_values[index],
                state.conv_cache[index].astype(dtype),
                masks,
                True,
            )
            new["memory"].append(jnp.concatenate([bank, layer_memory], axis=1)[:, 1:] if M else bank)
            new["left_context_keys"].append(
                jnp.concatenate(
                    [state.left_context_keys[index], keys.astype(state.left_context_keys.dtype)], 1
                )[:, S:]
            )
            new["left_context_values"].append(
                jnp.concatenate(
                    [state.left_context_values[index], values.astype(state.left_context_values.dtype)], 1
                )[:, S:]
            )
            new["conv_cache"].append(conv_cache)
        stepped = EmformerState(
            **{name: jnp.stack(arrays).astype(getattr(state, name).dtype) for name, arrays in new.items()},
            positions=past + S,
        )
        state = select_streams(valid > 0, stepped, state)
        return utterance[:, 0], jnp.maximum(lengths - R, 0), state

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
        self._check_input(input, lengths, "T + right_context_length")
        S, R = self.segment_length, self.right_context_length
        B, T = input.shape[0], input.shape[1] - R
        if T < 1:
            raise ValueError(
                f"input: expected at least right_context_length + 1 = {R + 1} frames, got {input.shape[1]}"
            )
        _checks.lengths_in_range("lengths", lengths, 0, T)
        lengths = lengths.astype(jnp.int32)
        chunks, chunk_lengths = segment_chunks(input, lengths, S, R)

        state = self.init_state(B, input.dtype) if state is None else state
        self._check_state(state, B)
        variables, model = self.variables, self.clone(parent=None)

        def step(carry, chunk):
            output, _, carry = model.apply(variables, chunk[0], chunk[1], carry, method=type(self).infer)
            return carry, output

        state, outputs = jax.lax.scan(step, state, (jnp.swapaxes(chunks, 0, 1), chunk_lengths.T))
        output = jnp.swapaxes(outputs, 0, 1).reshape(B, -1, outputs.shape[-1])[:, :T]
        return output, lengths, state
