"""The transducer's hyper-parameters: one frozen ``TransducerConfig`` from which every part of the model is built.

Letters: S segment_length and R right_context_length (input frames, before time reduction), V num_symbols.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from .. import _checks
from .._nn import WEIGHT_FORMATS, Dtype
from ..encoder_config import EncoderConfig
from ..layout import SegmentLayout

__all__ = ["TransducerConfig", "TransducerPart"]


@dataclasses.dataclass(frozen=True)
class TransducerConfig:
    """Every hyper-parameter of the Emformer RNN-T, validated once here and carried down to the modules.

    The fields are torchaudio's ``emformer_rnnt_model`` / ``conv_emformer_rnnt_model`` keywords, same names and
    meanings; the defaults are ``emformer_rnnt_base``'s (with 4097 symbols). ``transformer_kernel_size`` None
    builds an Emformer transcriber, an integer a ConvEmformer one (with ``transformer_conv_activation``; then
    ``transformer_activation`` is its feed-forward activation). segment_length and right_context_length count
    input frames and must be multiples of time_reduction_stride. The predictor's LSTM hidden size is
    symbol_embedding_dim. ``weights`` is streamformer's: how every matrix is stored, "float32" (training,
    conversion) or, for inference, "bfloat16" or "int8" (``streamformer.quantize`` makes those). Change a field
    with ``dataclasses.replace`` (which validates again).
    """

    input_dim: int = 80
    encoding_dim: int = 1024
    num_symbols: int = 4097
    segment_length: int = 16
    right_context_length: int = 4
    time_reduction_input_dim: int = 128
    time_reduction_stride: int = 4
    transformer_num_heads: int = 8
    transformer_ffn_dim: int = 2048
    transformer_num_layers: int = 20
    transformer_dropout: float = 0.1
    transformer_activation: str = "gelu"
    transformer_left_context_length: int = 30
    transformer_max_memory_size: int = 0
    transformer_weight_init_scale_strategy: str | None = "depthwise"
    transformer_tanh_on_mem: bool = True
    transformer_kernel_size: int | None = None
    transformer_conv_activation: str = "silu"
    symbol_embedding_dim: int = 512
    num_lstm_layers: int = 3
    lstm_layer_norm: bool = True
    lstm_layer_norm_epsilon: float = 1e-3
    lstm_dropout: float = 0.3
    joiner_activation: str = "relu"
    weights: str = "float32"

    def __post_init__(self):
        # The transcriber's fields, then its encoder's, the predictor's and the joiner's.
        for name in ("input_dim", "encoding_dim", "segment_length", "time_reduction_input_dim"):
            _checks.positive_int(name, getattr(self, name))
        _checks.positive_int("time_reduction_stride", self.time_reduction_stride)
        _checks.positive_int("right_context_length", self.right_context_length, minimum=0)
        stride = self.time_reduction_stride
        for name in ("segment_length", "right_context_length"):
            if getattr(self, name) % stride:
                raise ValueError(
                    f"{name}: expected a multiple of time_reduction_stride ({stride}), got {getattr(self, name)}"
                )
        if self.transformer_kernel_size is not None:
            _checks.positive_int("transformer_kernel_size", self.transformer_kernel_size)
        self.encoder_config  # noqa: B018 -- validates the encoder's fields
        for name in ("num_symbols", "symbol_embedding_dim", "num_lstm_layers"):
            _checks.positive_int(name, getattr(self, name))
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ValueError(f"lstm_dropout: expected a probability in [0, 1), got {self.lstm_dropout!r}")
        if not self.lstm_layer_norm_epsilon > 0:
            raise ValueError(
                f"lstm_layer_norm_epsilon: expected a positive number, got {self.lstm_layer_norm_epsilon!r}"
            )
        _checks.one_of("joiner_activation", self.joiner_activation, ["relu", "tanh"])
        _checks.one_of("weights", self.weights, WEIGHT_FORMATS)

    @property
    def encoder(self) -> str:
        """ "emformer" or "conv_emformer" (the transcriber's transformer)."""
        return "emformer" if self.transformer_kernel_size is None else "conv_emformer"

    @property
    def encoder_config(self) -> EncoderConfig:
        """The transcriber's Emformer or ConvEmformer, which runs on reduced frames: segments of
        segment_length // stride frames, right_context_length // stride look-ahead frames, inputs of
        time_reduction_input_dim * stride features. The one place the transformer_* fields become the
        encoder's."""
        stride = self.time_reduction_stride
        return EncoderConfig(
            input_dim=self.time_reduction_input_dim * stride,
            num_heads=self.transformer_num_heads,
            ffn_dim=self.transformer_ffn_dim,
            num_layers=self.transformer_num_layers,
            segment_length=self.segment_length // stride,
            dropout=self.transformer_dropout,
            activation=self.transformer_activation,
            left_context_length=self.transformer_left_context_length,
            right_context_length=self.right_context_length // stride,
            max_memory_size=self.transformer_max_memory_size,
            weight_init_scale_strategy=self.transformer_weight_init_scale_strategy,
            tanh_on_mem=self.transformer_tanh_on_mem,
            kernel_size=self.transformer_kernel_size,
            conv_activation=self.transformer_conv_activation,
            weights=self.weights,
        )

    @property
    def layout(self) -> SegmentLayout:
        """Segments and look-ahead in input frames (S, R): the chunks a stream delivers."""
        return SegmentLayout(self.segment_length, self.right_context_length)


class TransducerPart(nn.Module):
    """Base of the transducer's networks (transcriber, predictor, joiner): each is built from the whole
    ``config`` and reads the fields it needs; ``dtype`` is the computation dtype, ``param_dtype`` the
    parameters'."""

    config: TransducerConfig
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        if not isinstance(self.config, TransducerConfig):
            raise TypeError(f"config: expected a TransducerConfig, got {type(self.config).__name__}")
        super().__post_init__()
