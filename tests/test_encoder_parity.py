"""Emformer and ConvEmformer against torchaudio 2.8: parity grids (forward on padded batches, infer loops),
initialisation statistics, constructor checks."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from streamformer import ConvEmformer, Emformer, EmformerState
from tests.encoder_cases import (
    D,
    assert_close,
    flax_infer_loop,
    make_conv_emformer,
    make_emformer,
    padded_batch,
    torch_forward,
    torch_infer_loop,
)

# A grid covering every factor of the issue: memory off/on (tanh both ways), left context 0/>0, right context
# 0/>0, each activation, each init strategy, several segment lengths; each is run with lengths that are and
# are not multiples of segment_length.
GRID = [
    dict(segment_length=4),
    dict(segment_length=4, right_context_length=2, activation="gelu"),
    dict(segment_length=3, left_context_length=4, activation="silu", weight_init_scale_strategy="constant"),
    dict(segment_length=4, max_memory_size=2, weight_init_scale_strategy=None),
    dict(
        segment_length=4, max_memory_size=3, tanh_on_mem=True, left_context_length=2, right_context_length=1
    ),
    dict(
        segment_length=5, max_memory_size=1, left_context_length=7, right_context_length=3, activation="gelu"
    ),
    dict(
        segment_length=2,
        max_memory_size=4,
        tanh_on_mem=True,
        right_context_length=1,
        activation="silu",
        weight_init_scale_strategy="constant",
    ),
    dict(segment_length=6, left_context_length=6, right_context_length=2, weight_init_scale_strategy=None),
]


@pytest.mark.parametrize("config", GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_parity_forward_and_infer(torchaudio_ref, config, rng):
    """Forward on a padded batch (lengths that are and aren't multiples of S) against torchaudio on each
    sequence alone, and the infer loop against torchaudio's infer loop."""
    reference, model, variables = make_emformer(torchaudio_ref, num_layers=2, **config)
    S, R = config["segment_length"], config.get("right_context_length", 0)
    lengths = [4 * S, 4 * S - 1, 2 * S + 1]
    batch, solos = padded_batch(rng, lengths, R, D)
    out, out_lengths = jax.jit(model.apply)(variables, jnp.asarray(batch), jnp.array(lengths))
    assert out.shape == (3, 4 * S, D) and out_lengths.tolist() == lengths
    for b, length in enumerate(lengths):
        assert_close(
            out[b, :length], torch_forward(reference, solos[b], length, R), what=f"forward, T={length}"
        )
    infer = jax.jit(lambda *a: model.apply(*a, method="infer"))
    assert_close(
        flax_infer_loop(infer, variables, solos[0][None], S, R)[0],
        torch_infer_loop(reference, solos[0], S, R),
        what="infer loop",
    )


# ConvEmformer: kernel sizes from 2 to wider than a segment, and the factors of the Emformer grid.
CONV_GRID = [
    dict(segment_length=4, kernel_size=2),
    dict(
        segment_length=4, kernel_size=3, right_context_length=2, ffn_activation="gelu", conv_activation="relu"
    ),
    dict(
        segment_length=3,
        kernel_size=7,
        left_context_length=4,
        right_context_length=1,
        max_memory_size=2,
        conv_activation="gelu",
        weight_init_scale_strategy="constant",
    ),
    dict(
        segment_length=4,
        kernel_size=4,
        max_memory_size=3,
        tanh_on_mem=True,
        ffn_activation="silu",
        weight_init_scale_strategy=None,
    ),
    dict(
        segment_length=2,
        kernel_size=5,
        right_context_length=3,
        max_memory_size=1,
        left_context_length=3,
        tanh_on_mem=True,
        ffn_activation="gelu",
        conv_activation="silu",
    ),
]


@pytest.mark.parametrize("config", CONV_GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_conv_emformer_parity_forward_and_infer(torchaudio_ref, config, rng):
    reference, model, variables = make_conv_emformer(torchaudio_ref, num_layers=2, **config)
    S, R = config["segment_length"], config.get("right_context_length", 0)
    lengths = [4 * S, 4 * S - 1, 2 * S + 1]
    batch, solos = padded_batch(rng, lengths, R, D)
    out, _ = jax.jit(model.apply)(variables, jnp.asarray(batch), jnp.array(lengths))
    for b, length in enumerate(lengths):
        assert_close(
            out[b, :length], torch_forward(reference, solos[b], length, R), what=f"forward, T={length}"
        )
    infer = jax.jit(lambda *a: model.apply(*a, method="infer"))
    assert_close(
        flax_infer_loop(infer, variables, solos[0][None], S, R)[0],
        torch_infer_loop(reference, solos[0], S, R),
        what="infer loop",
    )


@pytest.mark.parametrize("kind", [Emformer, ConvEmformer])
def test_state_has_fixed_shapes_and_init_needs_no_parameters(kind):
    extra = dict(kernel_size=6) if kind is ConvEmformer else {}
    model = kind(D, 2, 16, 3, 4, left_context_length=3, right_context_length=1, max_memory_size=2, **extra)
    state = model.init_state(5)
    assert isinstance(state, EmformerState)
    assert state.memory.shape == (3, 5, 2, D)
    assert state.left_context_keys.shape == state.left_context_values.shape == (3, 5, 3, D)
    assert state.positions.shape == (5,) and state.positions.dtype == jnp.int32
    assert len(state.layers) == 3
    if kind is ConvEmformer:
        assert state.conv_cache.shape == (3, 5, 5, D)
        assert all(layer.conv_cache.shape == (5, 5, D) for layer in state.layers)
    else:  # only ConvEmformer's layers declare a convolution cache
        assert not any(hasattr(layer, "conv_cache") for layer in state.layers)


@pytest.mark.parametrize("kind", ["emformer", "conv_emformer"])
def test_initialisation_statistics_match_torchaudio(torchaudio_ref, kind):
    """Per-tensor statistics of a fresh Flax model against a fresh torchaudio model (same shapes, same laws)."""
    from streamformer import convert

    config = dict(input_dim=64, num_heads=4, ffn_dim=128, num_layers=4, segment_length=4, max_memory_size=2)
    if kind == "conv_emformer":
        config["kernel_size"] = 5
    for strategy in ("depthwise", "constant", None):
        torch.manual_seed(0)
        if kind == "emformer":
            reference = torchaudio_ref.models.Emformer(**config, weight_init_scale_strategy=strategy)
            model = Emformer(**config, weight_init_scale_strategy=strategy)
        else:
            reference = torchaudio_ref.prototype.models.ConvEmformer(
                **config, weight_init_scale_strategy=strategy
            )
            model = ConvEmformer(**config, weight_init_scale_strategy=strategy)

        ours = convert.to_torchaudio(model, model.init(jax.random.key(0), *model.example_inputs()))
        for name, tensor in reference.state_dict().items():
            theirs = tensor.numpy()
            mine = ours[name]
            assert mine.shape == theirs.shape, name
            if theirs.std() == 0:  # LayerNorm ones/zeros
                np.testing.assert_array_equal(mine, theirs, err_msg=name)
            else:
                # Both are uniform laws: compare their spread (std) and their bound (max |w|).
                # Sampling noise of a std estimate over n values is about 1 / sqrt(2 n).
                tol = 0.05 + 3 / np.sqrt(2 * theirs.size)
                assert abs(mine.std() / theirs.std() - 1) < tol, (strategy, name, mine.std(), theirs.std())
                assert abs(np.abs(mine).max() / np.abs(theirs).max() - 1) < 0.05 + 5 / theirs.size, (
                    strategy,
                    name,
                )
                assert abs(mine.mean()) < 4 * theirs.std() / np.sqrt(theirs.size) + 1e-3, (strategy, name)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(input_dim=10, num_heads=3), "input_dim: expected a multiple of num_heads"),
        (dict(activation="tanh"), "activation: expected one of"),
        (dict(weight_init_scale_strategy="xavier"), "weight_init_scale_strategy: expected one of"),
        (dict(left_context_length=-1), "left_context_length: expected an integer >= 0"),
        (dict(right_context_length=-2), "right_context_length: expected an integer >= 0"),
        (dict(max_memory_size=-1), "max_memory_size: expected an integer >= 0"),
        (dict(segment_length=0), "segment_length: expected an integer >= 1"),
        (dict(num_layers=0), "num_layers: expected an integer >= 1"),
        (dict(dropout=1.5), "dropout: expected a probability"),
    ],
)
def test_invalid_constructor_arguments(kwargs, match):
    config = dict(input_dim=D, num_heads=2, ffn_dim=16, num_layers=2, segment_length=4) | kwargs
    with pytest.raises(ValueError, match=match):
        Emformer(**config)
    conv_config = {("ffn_activation" if k == "activation" else k): v for k, v in config.items()}
    with pytest.raises(ValueError, match=match.replace("activation:", "ffn_activation:")):
        ConvEmformer(**({"kernel_size": 3} | conv_config))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_size=0), "kernel_size: expected an integer >= 1, got 0"),
        (dict(kernel_size=-3), "kernel_size: expected an integer >= 1, got -3"),
        (dict(kernel_size=3, conv_activation="tanh"), "conv_activation: expected one of"),
        (dict(kernel_size=3, ffn_activation="elu"), "ffn_activation: expected one of"),
    ],
)
def test_invalid_conv_emformer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConvEmformer(D, 2, 16, 2, 4, **kwargs)


def test_grid_covers_the_issue():
    keys = set(itertools.chain.from_iterable(GRID))
    assert {
        "max_memory_size",
        "tanh_on_mem",
        "left_context_length",
        "right_context_length",
        "activation",
        "weight_init_scale_strategy",
    } <= keys
    assert {c.get("activation", "relu") for c in GRID} == {"relu", "gelu", "silu"}
    assert {c.get("weight_init_scale_strategy", "depthwise") for c in GRID} == {"depthwise", "constant", None}
