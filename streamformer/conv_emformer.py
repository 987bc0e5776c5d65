"""ConvEmformer (Shi et al. 2022, "Streaming Transformer Transducer based Speech Recognition Using Non-Causal
Convolution"), torchaudio.prototype.models.ConvEmformer in Flax.

torchaudio shipped it as a prototype, deprecated it in 2.8 and removed it in 2.9; this is its maintained home.
Layer: half-step feed-forward, layer norm, attention with memory and left context (shared with Emformer),
the depthwise convolution module, half-step feed-forward, output layer norm.

The convolution is causal over the utterance frames ([cache, frames]); each right-context block is convolved
with the K - 1 frames that precede it in its own sequence: the end of its segment, or the end of the
sequence for its last segment. So no convolution ever reads padding or another stream's frames.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from . import _checks
from ._nn import ACTIVATIONS, Dtype, activation, dense, jointly, layer_norm, torch_default_bias_init
from .attention import EmformerAttention, EmformerLayerState, SegmentMasks
from .encoder_config import EncoderConfig
from .layout import SegmentLayout
from .streaming import StreamingEncoder, masked_segment_mean

__all__ = ["ConvEmformer", "ConvEmformerLayerState"]


@flax.struct.dataclass
class ConvEmformerLayerState(EmformerLayerState):
    """An Emformer layer's state (memory, left-context keys and values) and the convolution's:

    conv_cache: (B, K - 1, D) the convolution module's input over the last K - 1 frames of the stream.
    """

    conv_cache: jax.Array


class _HalfStepFeedForward(nn.Module):
    """torchaudio's _ResidualContainer(Sequential(LayerNorm, Linear, act, Dropout, Linear, Dropout), 0.5)."""

    config: EncoderConfig
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, deterministic: bool):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(c.dropout)
        h = dense(c.ffn_dim, fan_in=c.input_dim, name="module_1", weights=c.weights, **kw)(
            layer_norm(name="module_0", **kw)(x)
        )
        h = drop(activation(c.activation, "ffn_activation")(h), deterministic=deterministic)
        h = dense(c.input_dim, fan_in=c.ffn_dim, name="module_4", weights=c.weights, **kw)(h)
        h = drop(h, deterministic=deterministic)
        return 0.5 * h + x


class _ConvolutionModule(nn.Module):
    """torchaudio's _ConvolutionModule: LayerNorm, Linear + GLU, depthwise Conv1d, LayerNorm, activation, Linear."""

    config: EncoderConfig
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, utterance, right_context, conv_cache, valid_frames, deterministic: bool):
        """utterance (B, N, S, D), right_context (B, N, R, D), conv_cache (B, K - 1, D), valid_frames (B, N).
        Returns utterance, right_context and the new cache (the K - 1 frames before the last segment's right
        context: the stream's next cache in a streaming step, where N = 1)."""
        B, N, S, D = utterance.shape
        R, K = right_context.shape[2], self.config.kernel_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        pre_norm = layer_norm(name="pre_conv_0", **kw)
        pre_linear = dense(2 * D, fan_in=D, name="pre_conv_1", weights=self.config.weights, **kw)
        conv = nn.Conv(
            D,
            (K,),
            padding="VALID",
            feature_group_count=D,
            bias_init=torch_default_bias_init(K),
            kernel_init=nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            name="conv",
            **kw,
        )
        post_norm = layer_norm(name="post_conv_0", **kw)
        post_linear = dense(D, fan_in=D, name="post_conv_2", weights=self.config.weights, **kw)
        glu = lambda x: x[..., :D] * jax.nn.sigmoid(x[..., D:])  # noqa: E731

        # The row-wise parts run on the right context and the segment together (one read of each matrix).
        x_rc, x_utterance = jointly(lambda x: glu(pre_linear(pre_norm(x))), right_context, utterance)
        x_utterance = x_utterance.reshape(B, N * S, D)
        history = jnp.concatenate(
            [conv_cache.astype(x_utterance.dtype), x_utterance], axis=1
        )  # (B, K-1 + N*S, D)
        conv_utterance = conv(history).reshape(B, N, S, D)
        # Each block's K - 1 preceding frames end where its right context starts: segment end or sequence end.
        rc_start = SegmentLayout(S, R).right_context_starts(
            valid_frames
        )  # (B, N); history is offset by K - 1
        prefix_index = rc_start[..., None] + jnp.arange(K - 1)  # (B, N, K - 1) into history
        prefix = jnp.take_along_axis(history, prefix_index.reshape(B, -1)[..., None], axis=1).reshape(
            B, N, K - 1, D
        )
        new_cache = prefix[:, -1]
        conv_rc = x_rc  # empty without right context
        if R:
            blocks = jnp.concatenate([prefix, x_rc], axis=2).reshape(B * N, K - 1 + R, D)
            conv_rc = conv(blocks).reshape(B, N, R, D)

        act = activation(self.config.conv_activation, "conv_activation")
        drop = nn.Dropout(self.config.dropout)
        post = lambda y: drop(post_linear(act(post_norm(y))), deterministic=deterministic)  # noqa: E731
        post_rc, post_utterance = jointly(post, conv_rc, conv_utterance)
        return post_utterance + utterance, post_rc + right_context, new_cache


class ConvEmformerLayer(nn.Module):
    """torchaudio's _ConvEmformerLayer; parameter names follow torchaudio (ffn0.module.0 is ffn0/module_0, ...)."""

    config: EncoderConfig
    layer_index: int
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype) -> ConvEmformerLayerState:
        """What this layer keeps between streaming steps, fresh: an Emformer layer's memory and left-context
        keys and values, and the convolution's cache (B, K - 1, D). Needs no parameters."""
        c = self.config
        cache = jnp.zeros((batch_size, c.kernel_size - 1, c.input_dim), dtype)
        return ConvEmformerLayerState.zeros(
            batch_size, c.max_memory_size, c.left_context_length, c.input_dim, dtype, conv_cache=cache
        )

    @nn.compact
    def __call__(
        self,
        utterance: jax.Array,
        right_context: jax.Array,
        memory: jax.Array,
        state: ConvEmformerLayerState,
        masks: SegmentMasks,
        deterministic: bool,
    ):
        """See EmformerLayer. Returns (utterance, right_context, memory, state)."""
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ffn0, ffn1 = _HalfStepFeedForward(c, name="ffn0", **kw), _HalfStepFeedForward(c, name="ffn1", **kw)
        layer_norm_input = layer_norm(name="layer_norm_input", **kw)

        # Unlike Emformer, the summary is the mean of the raw segment, which then goes through ffn0 and the norm.
        has_memory = c.max_memory_size > 0
        # The row-wise parts run on the right context, the segment and the summary together (``jointly``):
        # one read of each weight matrix per step.
        blocks = [right_context, utterance]
        if has_memory:
            blocks.append(masked_segment_mean(utterance, masks.valid_frames)[:, :, None])
        blocks = jointly(lambda x: ffn0(x, deterministic), *blocks)
        right_context, utterance = blocks[:2]
        normed = jointly(layer_norm_input, *blocks)
        rc_out, utt_out, memory, state = EmformerAttention(c, self.layer_index, name="attention", **kw)(
            normed[0],
            normed[1],
            normed[2][:, :, 0] if has_memory else None,
            memory,
            state,
            masks,
            deterministic,
        )
        drop = nn.Dropout(c.dropout)
        utterance = drop(utt_out, deterministic=deterministic) + utterance
        right_context = drop(rc_out, deterministic=deterministic) + right_context
        utterance, right_context, conv_cache = _ConvolutionModule(c, name="conv", **kw)(
            utterance, right_context, state.conv_cache, masks.valid_frames, deterministic
        )
        layer_norm_output = layer_norm(name="layer_norm_output", **kw)
        right_context, utterance = jointly(
            lambda x: layer_norm_output(ffn1(x, deterministic)), right_context, utterance
        )
        return utterance, right_context, memory, state.replace(conv_cache=conv_cache)


class ConvEmformer(StreamingEncoder):
    """Convolution-augmented streaming transformer; torchaudio's constructor, same order and defaults, then
    ``dtype`` and ``param_dtype``. The methods are Emformer's: ``__call__``, ``infer``, ``stream``, ``init_state``;
    the state also carries each layer's convolution cache of kernel_size - 1 frames per stream.

    Args:
        input_dim, num_heads, ffn_dim, num_layers, segment_length: as for Emformer.
        kernel_size: K, width of the depthwise convolution (>= 1).
        dropout, left_context_length, right_context_length, max_memory_size, weight_init_scale_strategy,
        tanh_on_mem, negative_inf: as for Emformer.
        ffn_activation: feed-forward activation, "relu", "gelu" or "silu".
        conv_activation: activation in the convolution module, "relu", "gelu" or "silu".
        weights: as for Emformer (the depthwise convolution's kernel stays float32).

    Example:
        >>> model = ConvEmformer(64, 4, 128, 2, segment_length=4, kernel_size=3, right_context_length=1)
        >>> x, lengths = jnp.zeros((2, 17, 64)), jnp.array([16, 12])
        >>> variables = model.init(jax.random.key(0), x, lengths)
        >>> output, output_lengths, state = model.apply(variables, x, lengths, method="stream")
    """

    input_dim: int
    num_heads: int
    ffn_dim: int
    num_layers: int
    segment_length: int
    kernel_size: int
    dropout: float = 0.0
    ffn_activation: str = "relu"
    left_context_length: int = 0
    right_context_length: int = 0
    max_memory_size: int = 0
    weight_init_scale_strategy: str | None = "depthwise"
    tanh_on_mem: bool = False
    negative_inf: float = -1e8
    conv_activation: str = "silu"
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    weights: str = "float32"

    layer_class: ClassVar[type[nn.Module]] = ConvEmformerLayer
    config_names: ClassVar[dict[str, str]] = {"ffn_activation": "activation"}

    def __post_init__(self):
        # Named as the caller named it (EncoderConfig, which the base class checks next, calls it activation).
        _checks.one_of("ffn_activation", self.ffn_activation, list(ACTIVATIONS))
        super().__post_init__()
