"""Emformer and ConvEmformer: parity with torchaudio 2.8, padding, per-stream positions, stream == forward, init,
jit/grad, errors. The property tests run for both encoders through the ``memory_model`` fixture."""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from streamformer import ConvEmformer, Emformer, EmformerState, reset_streams
from tests.encoder_cases import (
    assert_close,
    converted,
    flax_infer_loop,
    padded_batch,
    torch_forward,
    torch_infer_loop,
)

D = 8

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


def make(torchaudio_ref, num_layers=3, **kw):
    config = dict(input_dim=D, num_heads=2, ffn_dim=16, num_layers=num_layers, **kw)
    torch.manual_seed(len(str(kw)))
    reference = torchaudio_ref.models.Emformer(**config)
    model = Emformer(**config)
    return reference, model, converted(reference, model)


def make_conv(torchaudio_ref, num_layers=3, **kw):
    config = dict(input_dim=D, num_heads=2, ffn_dim=16, num_layers=num_layers, **kw)
    torch.manual_seed(len(str(kw)))
    reference = torchaudio_ref.prototype.models.ConvEmformer(**config)
    model = ConvEmformer(**config)
    return reference, model, converted(reference, model)


@pytest.mark.parametrize("config", GRID, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_parity_forward_and_infer(torchaudio_ref, config, rng):
    """Forward on a padded batch (lengths that are and aren't multiples of S) against torchaudio on each
    sequence alone, and the infer loop against torchaudio's infer loop."""
    reference, model, variables = make(torchaudio_ref, num_layers=2, **config)
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
    reference, model, variables = make_conv(torchaudio_ref, num_layers=2, **config)
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


@pytest.fixture(scope="module", params=["emformer", "conv_emformer"])
def memory_model(torchaudio_ref, request):
    """Memory, left and right context (and for ConvEmformer a kernel wider than a segment) on: the
    configuration where every state slot matters. The tests using it run for both encoders."""
    config = dict(segment_length=4, left_context_length=3, right_context_length=2, max_memory_size=2)
    if request.param == "emformer":
        reference, model, variables = make(torchaudio_ref, num_layers=2, **config)
    else:
        reference, model, variables = make_conv(torchaudio_ref, num_layers=2, kernel_size=6, **config)
    return (
        reference,
        model,
        variables,
        jax.jit(lambda v, x, n: model.apply(v, x, n)),
        jax.jit(lambda v, x, n, s: model.apply(v, x, n, s, method="infer")),
        jax.jit(lambda v, x, n: model.apply(v, x, n, method="stream")),
    )


def test_padded_batch_equals_each_sequence_alone(memory_model):
    reference, model, variables, forward, _, stream = memory_model
    lengths = [13, 4, 16, 1]
    batch, solos = padded_batch(np.random.default_rng(1), lengths, R=2, D=D)
    out, _ = forward(variables, jnp.asarray(batch), jnp.array(lengths))
    streamed, _, _ = stream(variables, jnp.asarray(batch), jnp.array(lengths))
    for b, length in enumerate(lengths):
        expected = torch_forward(reference, solos[b], length, 2)
        assert_close(out[b, :length], expected, what=f"forward, sequence {b}")
        assert_close(streamed[b, :length], expected, what=f"stream, sequence {b}")


def test_torchaudio_itself_leaks_padding(memory_model):
    """The reason for our padding rule: torchaudio's valid outputs change with the padding's content."""
    reference, *_ = memory_model
    lengths = [9, 16]
    batch, _ = padded_batch(np.random.default_rng(2), lengths, R=2, D=D)
    other = batch.copy()
    other[0, 11:] = (
        np.random.default_rng(7).standard_normal(other[0, 11:].shape) * 3
    )  # not a constant shift: LayerNorm removes those
    with torch.no_grad():
        a, _ = reference(torch.from_numpy(batch), torch.tensor(lengths))
        b, _ = reference(torch.from_numpy(other), torch.tensor(lengths))
    assert float((a[0, :9] - b[0, :9]).abs().max()) > 1e-3


def test_streams_started_at_different_times(memory_model):
    """Stream 1 joins three segments after stream 0 (chunks of length 0 leave its state untouched); each matches
    its own solo run, although torchaudio would read stream 0's position for both."""
    reference, model, variables, _, infer, _ = memory_model
    S, R, steps, delay = 4, 2, 6, 3
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((steps * S + R, D)).astype(np.float32)
    x1 = rng.standard_normal(((steps - delay) * S + R, D)).astype(np.float32)
    state, out0, out1 = None, [], []
    for i in range(steps):
        chunk0 = x0[i * S : i * S + S + R]
        j = i - delay
        chunk1 = x1[j * S : j * S + S + R] if j >= 0 else np.full((S + R, D), 1e3, np.float32)
        out, _, state = infer(
            variables,
            jnp.asarray(np.stack([chunk0, chunk1])),
            jnp.array([S + R, S + R if j >= 0 else 0]),
            state,
        )
        out0.append(np.asarray(out[0]))
        if j >= 0:
            out1.append(np.asarray(out[1]))
    assert_close(np.concatenate(out0), torch_infer_loop(reference, x0, S, R), what="stream 0")
    assert_close(np.concatenate(out1), torch_infer_loop(reference, x1, S, R), what="stream 1 (started late)")
    np.testing.assert_array_equal(np.asarray(state.positions), [steps * S, (steps - delay) * S])


def test_reset_streams_lets_a_new_utterance_take_a_slot(memory_model):
    reference, model, variables, _, infer, _ = memory_model
    S, R = 4, 2
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3 * S + R, D)).astype(np.float32)
    state = None
    for i in range(3):
        _, _, state = infer(variables, jnp.asarray(x[:, i * S : i * S + S + R]), jnp.full((2,), S + R), state)
    state = reset_streams(state, jnp.array([False, True]))
    fresh = rng.standard_normal((2 * S + R, D)).astype(np.float32)
    outs = []
    for i in range(2):
        chunk = np.stack([x[0, : S + R], fresh[i * S : i * S + S + R]])
        out, _, state = infer(variables, jnp.asarray(chunk), jnp.full((2,), S + R), state)
        outs.append(np.asarray(out[1]))
    assert_close(np.concatenate(outs), torch_infer_loop(reference, fresh, S, R), what="reset stream")
    assert int(state.positions[1]) == 2 * S and int(state.positions[0]) == 5 * S


@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_stream_equals_forward(memory_model, data):
    """stream(x) == forward(x) on every valid frame, partial final segments and padded batches included."""
    _, model, variables, forward, _, stream = memory_model
    lengths = data.draw(st.lists(st.integers(1, 23), min_size=3, max_size=3))
    seed = data.draw(st.integers(0, 2**16))
    batch, _ = padded_batch(np.random.default_rng(seed), lengths + [23], R=2, D=D, junk=50.0)  # fixed shape
    batch, lengths = batch[:3], lengths
    out, _ = forward(variables, jnp.asarray(batch), jnp.array(lengths))
    streamed, _, state = stream(variables, jnp.asarray(batch), jnp.array(lengths))
    for b, length in enumerate(lengths):
        assert_close(streamed[b, :length], out[b, :length], what=f"lengths={lengths}, sequence {b}")
    np.testing.assert_array_equal(np.asarray(state.positions), [-(-n // 4) * 4 for n in lengths])


@pytest.mark.parametrize("kind", [Emformer, ConvEmformer])
def test_state_has_fixed_shapes_and_init_needs_no_parameters(kind):
    extra = dict(kernel_size=6) if kind is ConvEmformer else {}
    model = kind(D, 2, 16, 3, 4, left_context_length=3, right_context_length=1, max_memory_size=2, **extra)
    state = model.init_state(5)
    assert isinstance(state, EmformerState)
    assert state.memory.shape == (3, 5, 2, D)
    assert state.left_context_keys.shape == state.left_context_values.shape == (3, 5, 3, D)
    assert state.positions.shape == (5,) and state.positions.dtype == jnp.int32
    assert state.conv_cache.shape == (3, 5, 5 if kind is ConvEmformer else 0, D)


def test_one_compiled_step_serves_every_segment(memory_model):
    _, model, variables, *_ = memory_model
    traces = []

    @jax.jit
    def step(v, x, n, s):
        traces.append(1)
        return model.apply(v, x, n, s, method="infer")

    state = model.init_state(2)
    for _ in range(4):
        _, _, state = step(variables, jnp.ones((2, 6, D)), jnp.full((2,), 6), state)
    assert len(traces) == 1


def test_jit_grad_and_dropout(memory_model):
    _, model, variables, forward, *_ = memory_model
    x, lengths = (
        jnp.asarray(np.random.default_rng(5).standard_normal((2, 14, D)), jnp.float32),
        jnp.array([12, 7]),
    )
    dropout_model = model.clone(dropout=0.3)

    def loss(params, rng):
        out, _ = dropout_model.apply(
            {"params": params}, x, lengths, deterministic=False, rngs={"dropout": rng}
        )
        return jnp.mean(out**2)

    grad = jax.jit(jax.grad(loss))
    g1 = grad(variables["params"], jax.random.key(0))
    g2 = grad(variables["params"], jax.random.key(1))
    leaves = jax.tree_util.tree_leaves(g1)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)
    assert any(not np.allclose(a, b) for a, b in zip(leaves, jax.tree_util.tree_leaves(g2))), (
        "dropout has no effect"
    )
    deterministic, _ = dropout_model.apply(variables, x, lengths)
    assert_close(deterministic, forward(variables, x, lengths)[0], what="deterministic=True ignores dropout")


def test_bfloat16_compute_stays_close(memory_model):
    _, model, variables, forward, *_ = memory_model
    x, lengths = (
        jnp.asarray(np.random.default_rng(6).standard_normal((2, 14, D)), jnp.float32),
        jnp.array([12, 7]),
    )
    out16, _ = model.clone(dtype=jnp.bfloat16).apply(variables, x, lengths)
    assert out16.dtype == jnp.bfloat16
    assert_close(
        out16[0, :12].astype(jnp.float32),
        forward(variables, x, lengths)[0][0, :12],
        tol=0.1,
        what="bfloat16 vs float32",
    )


@pytest.mark.parametrize("kind", ["emformer", "conv_emformer"])
def test_initialisation_statistics_match_torchaudio(torchaudio_ref, kind):
    """Per-tensor statistics of a fresh Flax model against a fresh torchaudio model (same shapes, same laws)."""
    import convert

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


def test_bad_inputs_get_clear_errors(memory_model):
    _, model, variables, *_ = memory_model
    x, lengths = jnp.zeros((2, 14, D)), jnp.array([12, 7])
    cases = [
        (lambda: model.apply(variables, jnp.zeros((14, D)), lengths), "input: expected shape"),
        (lambda: model.apply(variables, jnp.zeros((2, 14, D + 1)), lengths), "input: expected shape"),
        (lambda: model.apply(variables, x, jnp.array([12])), "lengths: expected shape"),
        (lambda: model.apply(variables, x, jnp.array([[12, 7]])), "lengths: expected shape"),
        (lambda: model.apply(variables, x, jnp.array([12.0, 7.0])), "lengths: expected an integer array"),
        (
            lambda: model.apply(variables, x, jnp.array([-1, 7])),
            r"lengths: expected values in \[0, 12\], got \[-1\]",
        ),
        (
            lambda: model.apply(variables, x, jnp.array([13, 7])),
            r"lengths: expected values in \[0, 12\], got \[13\]",
        ),
        (lambda: model.apply(variables, jnp.zeros((2, 2, D)), lengths), "input: expected at least"),
        (
            lambda: model.apply(variables, jnp.zeros((2, 7, D)), jnp.array([6, 6]), None, method="infer"),
            "expected segment_length \\+ right_context_length = 6 frames per step, got 7",
        ),
        (
            lambda: model.apply(variables, jnp.zeros((2, 6, D)), jnp.array([7, 6]), None, method="infer"),
            r"lengths: expected values in \[0, 6\]",
        ),
        (
            lambda: model.apply(
                variables, jnp.zeros((2, 6, D)), jnp.array([6, 6]), model.init_state(3), method="infer"
            ),
            "state: memory has shape .* batch 2",
        ),
        (
            lambda: model.apply(
                variables,
                jnp.zeros((2, 6, D)),
                jnp.array([6, 6]),
                model.clone(left_context_length=5).init_state(2),
                method="infer",
            ),
            "another configuration",
        ),
        (
            lambda: model.apply(variables, jnp.zeros((2, 6, D)), jnp.array([6, 6]), [1, 2], method="infer"),
            "state: expected an EmformerState",
        ),
    ]
    for call, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            call()


def test_lengths_are_checked_under_jit_by_shape(memory_model):
    _, model, variables, forward, *_ = memory_model
    with pytest.raises(ValueError, match="lengths: expected shape"):
        forward(variables, jnp.zeros((2, 14, D)), jnp.array([1, 2, 3]))


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
