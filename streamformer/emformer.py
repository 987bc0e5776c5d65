"""Emformer (Shi et al. 2021), torchaudio.models.Emformer in Flax.

Layer: layer norm, attention with memory and left context, residual, position-wise feed-forward with its own
layer norm and residual, output layer norm. The machinery for segments, state and streaming is shared with
ConvEmformer in ``streaming.py`` and ``attention.py``.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ._nn import Dtype, activation, dense, jointly, layer_norm
from .attention import EmformerAttention, EmformerLayerState, SegmentMasks
from .encoder_config import EncoderConfig
from .streaming import EmformerState, StreamingEncoder, masked_segment_mean

__all__ = ["Emformer", "EmformerLayerState", "EmformerState"]


class EmformerLayer(nn.Module):
    """torchaudio's _EmformerLayer. Parameter names follow torchaudio (pos_ff_0 is pos_ff.0, ...)."""

    config: EncoderConfig
    layer_index: int
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype) -> EmformerLayerState:
        """What this layer keeps between streaming steps, fresh: memory (B, M, D), left-context keys and values
        (B, L, D). Needs no parameters."""
        c = self.config
        return EmformerLayerState.zeros(
            batch_size, c.max_memory_size, c.left_context_length, c.input_dim, dtype
        )

    @nn.compact
    def __call__(
        self,
        utterance: jax.Array,
        right_context: jax.Array,
        memory: jax.Array,
        state: EmformerLayerState,
        masks: SegmentMasks,
        deterministic: bool,
    ):
        """utterance (B, N, S, D), right_context (B, N, R, D), memory (B, N, D) from the layer below, the
        layer's state before the segments. Returns (utterance, right_context, memory (B, N, D) or None, state
        after the segments)."""
        c = self.config
        D = c.input_dim
        norm = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        has_memory = c.max_memory_size > 0

        layer_norm_input = layer_norm(name="layer_norm_input", **norm)
        # The right context and the segment go through the row-wise parts together (``jointly``): one read of
        # each weight matrix per step.
        normed_right_context, normed_utterance = jointly(layer_norm_input, right_context, utterance)
        summary = masked_segment_mean(normed_utterance, masks.valid_frames) if has_memory else None
        rc_out, utt_out, memory, state = EmformerAttention(c, self.layer_index, name="attention", **norm)(
            normed_right_context,
            normed_utterance,
            summary,
            memory,
            state,
            masks,
            deterministic,
        )

        drop = nn.Dropout(c.dropout)
        ffn_in = dense(c.ffn_dim, fan_in=D, name="pos_ff_1", weights=c.weights, **norm)
        ffn_out = dense(D, fan_in=c.ffn_dim, name="pos_ff_4", weights=c.weights, **norm)
        ffn_norm = layer_norm(name="pos_ff_0", **norm)
        output_norm = layer_norm(name="layer_norm_output", **norm)
        act = activation(c.activation)

        def post(attended, residual):
            x = drop(attended, deterministic=deterministic) + residual
            h = drop(act(ffn_in(ffn_norm(x))), deterministic=deterministic)
            x = drop(ffn_out(h), deterministic=deterministic) + x
            return output_norm(x)

        R = right_context.shape[2]
        output = post(jnp.concatenate([rc_out, utt_out], 2), jnp.concatenate([right_context, utterance], 2))
        return output[:, :, R:], output[:, :, :R], memory, state


class Emformer(StreamingEncoder):
    """Emformer: Efficient Memory Transformer Based Acoustic Model for Low Latency Streaming Speech Recognition.

    The constructor is torchaudio's, same order and defaults, then ``dtype`` (computation) and ``param_dtype``;
    the attention softmax always runs in float32. ``model.config`` is these arguments as one ``EncoderConfig``
    (what the layers receive); ``Emformer.from_config(config)`` builds the encoder of one.

    Args:
        input_dim: input dimension D.
        num_heads: attention heads per layer.
        ffn_dim: hidden dimension of each layer's feed-forward network.
        num_layers: number of layers.
        segment_length: frames per segment, S.
        dropout: dropout probability.
        activation: feed-forward activation, "relu", "gelu" or "silu".
        left_context_length: L, frames before a segment that it attends to.
        right_context_length: R, look-ahead frames after each segment.
        max_memory_size: M, memory vectors a segment attends to (0: no memory).
        weight_init_scale_strategy: "depthwise", "constant" or None (gains of the query/key/value initialisation).
        tanh_on_mem: tanh on memory vectors (else clamp to [-10, 10]).
        negative_inf: score of masked attention entries.
        weights: how the matrices are stored: "float32", or "bfloat16" or "int8" for inference
            (``streamformer.quantize(model, variables, weights)`` makes such a model and its variables).

    Methods (call through ``model.apply(variables, ..., method=...)``): ``__call__`` (training/offline forward),
    ``infer`` (one streaming step), ``stream`` (a whole utterance as one scan over ``infer``) and, on the unbound
    module, ``init_state``.

    Example:
        >>> model = Emformer(64, 4, 128, 2, segment_length=4, right_context_length=1)
        >>> x, lengths = jnp.zeros((2, 17, 64)), jnp.array([16, 12])
        >>> variables = model.init(jax.random.key(0), x, lengths)
        >>> output, output_lengths = model.apply(variables, x, lengths)                # (2, 16, 64)
        >>> chunk = jnp.zeros((2, 5, 64))
        >>> output, output_lengths, state = model.apply(variables, chunk, jnp.array([5, 5]), None, method="infer")
    """

    input_dim: int
    num_heads: int
    ffn_dim: int
    num_layers: int
    segment_length: int
    dropout: float = 0.0
    activation: str = "relu"
    left_context_length: int = 0
    right_context_length: int = 0
    max_memory_size: int = 0
    weight_init_scale_strategy: str | None = "depthwise"
    tanh_on_mem: bool = False
    negative_inf: float = -1e8
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    weights: str = "float32"

    layer_class: ClassVar[type[nn.Module]] = EmformerLayer
