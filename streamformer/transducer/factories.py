"""torchaudio's factories of the Emformer RNN-T (emformer_rnnt_model, emformer_rnnt_base) and of the same
transducer around a ConvEmformer (conv_emformer_rnnt_model): torchaudio's keywords become a ``TransducerConfig``
and ``RNNT.from_config`` builds the model of it.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._nn import Dtype
from .config import TransducerConfig
from .model import RNNT

__all__ = ["conv_emformer_rnnt_model", "emformer_rnnt_base", "emformer_rnnt_model"]


def emformer_rnnt_model(
    *,
    input_dim: int,
    encoding_dim: int,
    num_symbols: int,
    segment_length: int,
    right_context_length: int,
    time_reduction_input_dim: int,
    time_reduction_stride: int,
    transformer_num_heads: int,
    transformer_ffn_dim: int,
    transformer_num_layers: int,
    transformer_dropout: float,
    transformer_activation: str,
    transformer_left_context_length: int,
    transformer_max_memory_size: int,
    transformer_weight_init_scale_strategy: str | None,
    transformer_tanh_on_mem: bool,
    symbol_embedding_dim: int,
    num_lstm_layers: int,
    lstm_layer_norm: bool,
    lstm_layer_norm_epsilon: float,
    lstm_dropout: float,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> RNNT:
    """Builds the Emformer RNN-T: torchaudio.models.emformer_rnnt_model's keywords, meanings and parameter
    names, then ``dtype`` (computation) and ``param_dtype``.

    segment_length and right_context_length count input frames and must be multiples of time_reduction_stride
    (the Emformer runs on segment_length // stride and right_context_length // stride reduced frames, as in
    torchaudio). The predictor's LSTM hidden size is symbol_embedding_dim; the joiner's activation is relu.
    The keywords become a ``TransducerConfig`` (``model.config``).
    """
    arguments = locals()
    dtype, param_dtype = arguments.pop("dtype"), arguments.pop("param_dtype")
    return RNNT.from_config(TransducerConfig(**arguments), dtype=dtype, param_dtype=param_dtype)


def emformer_rnnt_base(num_symbols: int, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32) -> RNNT:
    """torchaudio.models.emformer_rnnt_base: the configuration of torchaudio's LibriSpeech Emformer RNN-T
    (80 mel features, 1024-dim encodings, 20 Emformer layers, segments of 16 + 4 frames, stride 4), which is
    ``TransducerConfig``'s defaults."""
    return RNNT.from_config(TransducerConfig(num_symbols=num_symbols), dtype=dtype, param_dtype=param_dtype)


def conv_emformer_rnnt_model(
    *,
    input_dim: int,
    encoding_dim: int,
    num_symbols: int,
    segment_length: int,
    right_context_length: int,
    time_reduction_input_dim: int,
    time_reduction_stride: int,
    transformer_num_heads: int,
    transformer_ffn_dim: int,
    transformer_num_layers: int,
    transformer_kernel_size: int,
    transformer_dropout: float,
    transformer_activation: str,
    transformer_left_context_length: int,
    transformer_max_memory_size: int,
    transformer_weight_init_scale_strategy: str | None,
    transformer_tanh_on_mem: bool,
    symbol_embedding_dim: int,
    num_lstm_layers: int,
    lstm_layer_norm: bool,
    lstm_layer_norm_epsilon: float,
    lstm_dropout: float,
    transformer_conv_activation: str = "silu",
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> RNNT:
    """The Emformer RNN-T with a ConvEmformer transcriber (torchaudio.prototype.models.ConvEmformer).

    emformer_rnnt_model's keywords plus ``transformer_kernel_size`` (the ConvEmformer's ``kernel_size``) and
    ``transformer_conv_activation`` (its ``conv_activation``, default "silu"); ``transformer_activation`` is
    the ConvEmformer's ``ffn_activation``. The torchaudio counterpart is torchaudio's RNNT whose
    ``transcriber.transformer`` is that ConvEmformer: the parameter names are the same with the ConvEmformer's
    layers under ``transcriber.transformer``.
    """
    arguments = locals()
    dtype, param_dtype = arguments.pop("dtype"), arguments.pop("param_dtype")
    return RNNT.from_config(TransducerConfig(**arguments), dtype=dtype, param_dtype=param_dtype)
