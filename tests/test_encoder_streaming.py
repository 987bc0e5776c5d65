"""Emformer and ConvEmformer streaming and batching properties (each test runs for both encoders through the
``memory_model`` fixture): padding, per-stream positions, stream == forward, one compiled step, jit/grad,
bfloat16, input errors."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings

from streamformer import reset_streams
from tests.encoder_cases import (
    D,
    assert_close,
    make_conv_emformer,
    make_emformer,
    padded_batch,
    torch_forward,
    torch_infer_loop,
)


@pytest.fixture(scope="module", params=["emformer", "conv_emformer"])
def memory_model(torchaudio_ref, request):
    """Memory, left and right context (and for ConvEmformer a kernel wider than a segment) on: the
    configuration where every state slot matters. The tests using it run for both encoders."""
    config = dict(segment_length=4, left_context_length=3, right_context_length=2, max_memory_size=2)
    if request.param == "emformer":
        reference, model, variables = make_emformer(torchaudio_ref, num_layers=2, **config)
    else:
        reference, model, variables = make_conv_emformer(
            torchaudio_ref, num_layers=2, kernel_size=6, **config
        )
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
