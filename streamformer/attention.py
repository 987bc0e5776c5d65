"""Emformer's attention over segments: memory, right context, left context and the segment itself.

Every segment attends to a fixed window of keys, so the training forward costs O(T) rather than building
torchaudio's (T + R·N + N) x (M + R·N + T) mask. The same code serves the streaming step, which is the
one-segment case whose memory and left context come from the state.

Shapes (per batch element b and segment n):

- queries: the segment's right-context block (R), its frames (S) and, with memory, its summary (1);
- keys/values: the memory window (M), the right-context block (R), the L frames before the segment and the
  segment's S frames. The memory window and the L + S frames are gathered from banks:
  the memory bank ``[the layer state's M memory slots, the memory vectors of segments 0 .. N - 2]`` with window
  n = positions [n, n + M), and the frame bank ``[the state's L left-context keys, keys of all segment frames
  (B, N·S, D)]`` with window n = positions [n·S, n·S + L + S). The forward pass is the case of a fresh state
  (every slot masked) and N segments; a streaming step is the case N = 1 with the state of the previous step.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ._nn import Dtype, dense, jointly
from .encoder_config import EncoderConfig
from .state import push_frames


@flax.struct.dataclass
class EmformerLayerState:
    """What one Emformer layer keeps between streaming steps, per stream (newest last, slots not yet filled
    masked in attention rather than sliced away, so shapes never change).

    memory: (B, M, D) the last M memory vectors the layer received (its input memory, as torchaudio stores).
    left_context_keys: (B, L, D) attention keys of the last L frames the layer saw.
    left_context_values: (B, L, D) the matching values.
    """

    memory: jax.Array
    left_context_keys: jax.Array
    left_context_values: jax.Array

    @classmethod
    def zeros(cls, batch_size: int, memory_size: int, left_context_length: int, dim: int, dtype, **extra):
        empty = lambda n: jnp.zeros((batch_size, n, dim), dtype)  # noqa: E731
        return cls(
            memory=empty(memory_size),
            left_context_keys=empty(left_context_length),
            left_context_values=empty(left_context_length),
            **extra,
        )


@flax.struct.dataclass
class SegmentMasks:
    """Which keys each segment may see (True = visible). The same for every layer.

    memory: (B, N, M) memory slots in the segment's window that hold a real memory vector.
    frames: (B, N, L + S) left-context and segment frames that exist and are valid for that sequence.
    valid_frames: (B, N) int32, the number of valid frames in each segment (0 .. S).
    """

    memory: jax.Array
    frames: jax.Array
    valid_frames: jax.Array


def gather_windows(bank: jax.Array, start: jax.Array, width: int) -> jax.Array:
    """bank (B, P, D), start (N,) -> (B, N, width, D) with [b, n, j] = bank[b, start[n] + j]."""
    index = start[:, None] + jnp.arange(width)[None, :]
    return bank[:, index]


class EmformerAttention(nn.Module):
    """torchaudio's _EmformerAttention (emb_to_key_value, emb_to_query, out_proj), computed per segment window.

    ``config`` is the encoder's; ``layer_index`` sets the query and key/value projections' initialisation
    (``config.weight_init_gain``).
    """

    config: EncoderConfig
    layer_index: int
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        right_context: jax.Array,
        utterance: jax.Array,
        summary: jax.Array | None,
        memory: jax.Array | None,
        state: EmformerLayerState,
        masks: SegmentMasks,
        deterministic: bool = True,
    ):
        """Attention for N segments at once.

        Args:
            right_context: (B, N, R, D) layer-normed right-context blocks.
            utterance: (B, N, S, D) layer-normed segment frames.
            summary: (B, N, D) summary queries, or None without memory.
            memory: (B, N, D) the memory vectors of the N segments from the layer below (or None without
                memory); segment n sees those of segments before it, after the state's.
            state: the layer's state before segment 0 (a fresh one in the forward pass).
            masks: which keys each segment may see.

        Returns:
            right_context (B, N, R, D), utterance (B, N, S, D), memory (B, N, D) or None, and the layer's
            state after the N segments (``state.replace(...)``: subclass fields are kept).
        """
        c = self.config
        D, H = c.input_dim, c.num_heads
        B, N, S, _ = utterance.shape
        R = right_context.shape[2]
        M = masks.memory.shape[-1]
        L = state.left_context_keys.shape[1]
        left_keys, left_values = state.left_context_keys, state.left_context_values
        kw = dict(fan_in=D, dtype=self.dtype, param_dtype=self.param_dtype, weights=c.weights)
        gain = c.weight_init_gain(self.layer_index)
        to_query = dense(D, gain=gain, name="emb_to_query", **kw)
        to_key_value = dense(2 * D, gain=gain, name="emb_to_key_value", **kw)

        def keys_values(x):
            kv = to_key_value(x)
            return kv[..., :D], kv[..., D:]

        queries = [right_context, utterance] + ([summary[:, :, None]] if summary is not None else [])
        query = to_query(jnp.concatenate(queries, axis=2)) * (D // H) ** -0.5  # (B, N, Q, D)

        # Keys and values of the right context and the segment in one product (one read of the weights).
        rc_kv, utt_kv = jointly(to_key_value, right_context, utterance)
        rc_keys, rc_values = rc_kv[..., :D], rc_kv[..., D:]
        utt_keys, utt_values = utt_kv[..., :D].reshape(B, N * S, D), utt_kv[..., D:].reshape(B, N * S, D)
        frame_start = c.layout.segment_starts(N)
        frame_keys = gather_windows(
            jnp.concatenate([left_keys.astype(utt_keys.dtype), utt_keys], 1), frame_start, L + S
        )
        frame_values = gather_windows(
            jnp.concatenate([left_values.astype(utt_values.dtype), utt_values], 1), frame_start, L + S
        )
        key_parts, value_parts = [rc_keys, frame_keys], [rc_values, frame_values]
        if M > 0:
            memory_bank = jnp.concatenate([state.memory.astype(memory.dtype), memory[:, : N - 1]], axis=1)
            mem_keys, mem_values = keys_values(memory_bank)
            key_parts.insert(0, gather_windows(mem_keys, jnp.arange(N), M))
            value_parts.insert(0, gather_windows(mem_values, jnp.arange(N), M))
        key = jnp.concatenate(key_parts, axis=2)  # (B, N, K, D), K = M + R + L + S
        value = jnp.concatenate(value_parts, axis=2)

        # Visibility (B, N, Q, K): frame queries see memory, the block's right context and the frame window;
        # the summary query sees the same but no memory.
        always = jnp.ones((B, N, R), bool)
        rows = jnp.concatenate([masks.memory, always, masks.frames], axis=-1)
        visible = jnp.broadcast_to(rows[:, :, None, :], (B, N, R + S, rows.shape[-1]))
        if summary is not None:
            summary_row = jnp.concatenate([jnp.zeros_like(masks.memory), always, masks.frames], axis=-1)
            visible = jnp.concatenate([visible, summary_row[:, :, None, :]], axis=2)

        split = lambda x: x.reshape(*x.shape[:-1], H, D // H)  # noqa: E731
        scores = jnp.einsum("bnqhd,bnkhd->bnhqk", split(query), split(key)).astype(jnp.float32)
        scores = jnp.where(visible[:, :, None], scores, jnp.float32(c.negative_inf))
        probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
        probs = nn.Dropout(c.dropout)(probs, deterministic=deterministic)
        attended = jnp.einsum("bnhqk,bnkhd->bnqhd", probs, split(value)).reshape(B, N, -1, D)
        output = dense(D, name="out_proj", **kw)(attended)

        memory_out = None
        if summary is not None:
            memory_out = output[:, :, R + S]
            memory_out = jnp.tanh(memory_out) if c.tanh_on_mem else jnp.clip(memory_out, -10, 10)
        new_state = state.replace(
            memory=push_frames(state.memory, memory) if M > 0 else state.memory,
            left_context_keys=push_frames(left_keys, utt_keys),
            left_context_values=push_frames(left_values, utt_values),
        )
        return output[:, :, :R], output[:, :, R : R + S], memory_out, new_state
