"""EncoderConfig: the one value an encoder's layers receive, gathered from torchaudio's constructor arguments and
derived from a TransducerConfig in one place. No parameters are built here (configs and unbound modules)."""

from __future__ import annotations

import dataclasses

import pytest

from streamformer import ConvEmformer, Emformer, EncoderConfig, TransducerConfig
from streamformer.transducer import encoder_for


def test_constructor_arguments_and_config_round_trip():
    emformer = Emformer(8, 2, 16, 3, 4, activation="gelu", left_context_length=3, max_memory_size=2)
    assert emformer.config == EncoderConfig(
        8, 2, 16, 3, 4, activation="gelu", left_context_length=3, max_memory_size=2
    )
    assert Emformer.from_config(emformer.config).config == emformer.config
    conv = ConvEmformer(8, 2, 16, 3, 4, kernel_size=5, ffn_activation="silu", conv_activation="relu")
    assert (conv.config.kernel_size, conv.config.activation, conv.config.conv_activation) == (
        5,
        "silu",
        "relu",
    )
    assert isinstance(encoder_for(conv.config), ConvEmformer) and isinstance(
        encoder_for(emformer.config), Emformer
    )
    assert encoder_for(conv.config).config == conv.config


def test_each_layer_declares_its_state():
    state = ConvEmformer(8, 2, 16, 3, 4, kernel_size=5, left_context_length=3, max_memory_size=2).init_state(
        2
    )
    layer = state.layers[0]
    assert len(state.layers) == 3 and layer.memory.shape == (2, 2, 8) and layer.conv_cache.shape == (2, 4, 8)
    assert not hasattr(Emformer(8, 2, 16, 1, 4).init_state(1).layers[0], "conv_cache")


def test_a_config_builds_only_the_encoder_it_describes():
    with pytest.raises(ValueError, match="config: Emformer expected kernel_size None, got 3"):
        Emformer.from_config(EncoderConfig(8, 2, 16, 1, 4, kernel_size=3))
    with pytest.raises(ValueError, match="config: ConvEmformer expected kernel_size an integer, got None"):
        ConvEmformer.from_config(EncoderConfig(8, 2, 16, 1, 4))
    with pytest.raises(TypeError, match="config: expected an EncoderConfig"):
        Emformer.from_config({"input_dim": 8})


def test_transducer_config_derives_the_encoder_on_reduced_frames():
    config = TransducerConfig()  # emformer_rnnt_base's
    encoder = config.encoder_config
    assert (encoder.input_dim, encoder.segment_length, encoder.right_context_length) == (512, 4, 1)
    assert (encoder.num_layers, encoder.activation, encoder.tanh_on_mem, encoder.kernel_size) == (
        20,
        "gelu",
        True,
        None,
    )
    conv = dataclasses.replace(config, transformer_kernel_size=8).encoder_config
    assert conv.kernel_size == 8 and conv.is_conv_emformer
    with pytest.raises(ValueError, match="transformer_kernel_size: expected an integer >= 1, got 0"):
        dataclasses.replace(config, transformer_kernel_size=0)
    with pytest.raises(ValueError, match="num_symbols: expected an integer >= 1, got 0"):
        TransducerConfig(num_symbols=0)
