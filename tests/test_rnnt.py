"""Emformer RNN-T: parity with torchaudio 2.8 (weights converted with convert.from_torchaudio), streaming,
padding, jit behaviour and argument errors, on a tiny model."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from streamformer.convert import from_torchaudio
from streamformer.transducer import (
    RNNT,
    Joiner,
    Predictor,
    PredictorState,
    TransducerConfig,
    conv_emformer_rnnt_model,
    emformer_rnnt_base,
    emformer_rnnt_model,
    joiner_fn,
)
from tests.rnnt_cases import STRIDE, TINY_RNNT, R, S, V

ATOL = 1e-4

# Segments of 8 + 4 input frames, stride 2: the Emformer runs on 4 + 2 reduced frames.
CONFIG = dict(TINY_RNNT, transformer_dropout=0.1, lstm_dropout=0.2)


def _t(x):
    return torch.from_numpy(np.array(x))


def _close(ours, theirs, atol=ATOL):
    ours, theirs = (
        np.asarray(ours),
        theirs.detach().numpy() if hasattr(theirs, "detach") else np.asarray(theirs),
    )
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)


@pytest.fixture(scope="module")
def pair(torchaudio_ref):
    """(our model, variables, torchaudio model) with the same weights."""
    torch.manual_seed(0)
    reference = torchaudio_ref.models.emformer_rnnt_model(**CONFIG).eval()
    model = emformer_rnnt_model(**CONFIG)
    variables = from_torchaudio(model, reference.state_dict())
    return model, variables, reference


@pytest.fixture(scope="module")
def fns(pair):
    """Jitted methods, shared by the tests so each shape compiles once."""
    model, variables, _ = pair

    def method(name):
        return jax.jit(lambda *args: model.apply(variables, *args, method=name))

    return {
        "forward": jax.jit(lambda *args: model.apply(variables, *args)),
        "transcribe": method("transcribe"),
        "step": method("transcribe_streaming"),
        "stream": method("transcribe_in_segments"),
        "predict": method("predict"),
        "join": method("join"),
    }


def _sources(rng, batch, frames, scale=1.0):
    return (scale * rng.standard_normal((batch, frames, CONFIG["input_dim"]))).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Parity with torchaudio, one sequence


def test_forward_matches_torchaudio(pair, fns, rng):
    model, variables, reference = pair
    T, U = (
        37,
        5,
    )  # 37 + 4 frames: time reduction drops one, segments of 4 reduced frames with a partial last one
    sources, targets = _sources(rng, 1, T + R), rng.integers(0, V, (1, U))
    logits, source_lengths, target_lengths, state = fns["forward"](
        sources, jnp.array([T]), targets, jnp.array([U])
    )
    with torch.no_grad():
        ref = reference(_t(sources), torch.tensor([T]), _t(targets), torch.tensor([U]))
    _close(logits, ref[0])
    assert logits.shape == (1, T // STRIDE, U, V)
    np.testing.assert_array_equal(source_lengths, ref[1].numpy())
    np.testing.assert_array_equal(target_lengths, ref[2].numpy())
    for layer, (h, c) in enumerate(ref[3]):
        _close(state.hidden[layer], h)
        _close(state.cell[layer], c)
    assert np.abs(np.asarray(logits)).max() > 0.1  # not trivially zero


def test_forward_with_predictor_state_matches_torchaudio(pair, fns, rng):
    _, _, reference = pair
    T, U = 24, 3
    sources, targets = _sources(rng, 1, T + R), rng.integers(0, V, (1, U))
    with torch.no_grad():
        _, _, first = reference.predict(_t(rng.integers(0, V, (1, 4))), torch.tensor([4]), None)
        ref = reference(_t(sources), torch.tensor([T]), _t(targets), torch.tensor([U]), first)
    ours = fns["forward"](
        sources, jnp.array([T]), targets, jnp.array([U]), PredictorState.from_torchaudio(first)
    )
    _close(ours[0], ref[0])
    for layer, (h, c) in enumerate(ref[3]):
        _close(ours[3].hidden[layer], h)
        _close(ours[3].cell[layer], c)


def test_transcribe_matches_torchaudio(pair, fns, rng):
    _, _, reference = pair
    for T in (40, 29):
        sources = _sources(rng, 1, T + R)
        output, lengths = fns["transcribe"](sources, jnp.array([T]))
        with torch.no_grad():
            ref_output, ref_lengths = reference.transcribe(_t(sources), torch.tensor([T]))
        _close(output, ref_output)
        np.testing.assert_array_equal(lengths, ref_lengths.numpy())


def test_transcribe_streaming_matches_torchaudio_loop(pair, fns, rng):
    """Segment by segment with the state carried, against torchaudio's transcribe_streaming loop, and the
    one-scan stream and offline transcribe against both."""
    model, _, reference = pair
    segments = 5
    T = segments * S
    sources = _sources(rng, 1, T + R)
    state, theirs_state, ours, theirs = None, None, [], []
    for i in range(segments):
        chunk = sources[:, i * S : i * S + S + R]
        output, lengths, state = fns["step"](chunk, jnp.array([S + R]), state)
        with torch.no_grad():
            ref_output, ref_lengths, theirs_state = reference.transcribe_streaming(
                _t(chunk), torch.tensor([S + R]), theirs_state
            )
        _close(output, ref_output)
        np.testing.assert_array_equal(lengths, ref_lengths.numpy())
        ours.append(np.asarray(output))
        theirs.append(ref_output.numpy())
    assert fns["step"]._cache_size() == 2  # state=None, then one compiled step for every later segment
    streamed, stream_lengths, final = fns["stream"](sources, jnp.array([T]))
    _close(streamed, np.concatenate(theirs, axis=1))
    offline, _ = fns["transcribe"](sources, jnp.array([T]))
    _close(offline, np.concatenate(ours, axis=1))
    np.testing.assert_array_equal(stream_lengths, [T // STRIDE])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL), final, state)


def test_predict_matches_torchaudio_whole_and_token_by_token(pair, fns, rng):
    _, _, reference = pair
    U = 6
    targets = rng.integers(0, V, (2, U))
    with torch.no_grad():
        ref_output, _, ref_state = reference.predict(_t(targets), torch.tensor([U, U]), None)
    output, lengths, state = fns["predict"](targets, jnp.array([U, U]), None)
    _close(output, ref_output)
    np.testing.assert_array_equal(lengths, [U, U])
    for layer, (h, c) in enumerate(ref_state):
        _close(state.hidden[layer], h)
        _close(state.cell[layer], c)
    # Token by token with the state carried, starting from the explicit zero state.
    step_state = pair[0].init_predictor_state(2)
    steps = []
    for u in range(U):
        step_output, _, step_state = fns["predict"](targets[:, u : u + 1], jnp.array([1, 1]), step_state)
        steps.append(np.asarray(step_output))
    np.testing.assert_allclose(np.concatenate(steps, axis=1), output, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), step_state, state)


def test_join_matches_torchaudio(pair, fns, rng):
    model, variables, reference = pair
    source_encodings = rng.standard_normal((2, 5, 16)).astype(np.float32)
    target_encodings = rng.standard_normal((2, 3, 16)).astype(np.float32)
    lengths = (jnp.array([5, 4]), jnp.array([3, 2]))
    logits, source_lengths, target_lengths = fns["join"](
        source_encodings, lengths[0], target_encodings, lengths[1]
    )
    with torch.no_grad():
        ref = reference.join(_t(source_encodings), _t(lengths[0]), _t(target_encodings), _t(lengths[1]))
    _close(logits, ref[0])
    np.testing.assert_array_equal(source_lengths, lengths[0])
    np.testing.assert_array_equal(target_lengths, lengths[1])
    # The pure joiner callable (for the memory-efficient loss) gives the same logits, chunk by chunk too.
    join = jax.jit(joiner_fn(model, variables))
    _close(join(source_encodings, target_encodings), ref[0])
    _close(
        jnp.concatenate(
            [
                join(source_encodings[:, :2], target_encodings),
                join(source_encodings[:, 2:], target_encodings),
            ],
            axis=1,
        ),
        ref[0],
    )


@pytest.mark.parametrize("layer_norm, activation", [(False, "tanh"), (True, "relu")])
def test_predictor_and_joiner_variants_match_torchaudio(torchaudio_ref, rng, layer_norm, activation):
    """Without LSTM layer norm x2g has a bias and there are no norms; the joiner may use tanh."""
    rnnt = torchaudio_ref.models.rnnt
    torch.manual_seed(1)
    reference = rnnt._Predictor(
        V, 16, 12, 3, 12, lstm_layer_norm=layer_norm, lstm_layer_norm_epsilon=1e-5
    ).eval()
    predictor = Predictor(
        TransducerConfig(
            num_symbols=V,
            encoding_dim=16,
            symbol_embedding_dim=12,
            num_lstm_layers=3,
            lstm_layer_norm=layer_norm,
            lstm_layer_norm_epsilon=1e-5,
        )
    )
    variables = from_torchaudio(predictor, reference.state_dict())
    assert ("bias" in variables["params"]["lstm_layers_0"]["x2g"]) is not layer_norm
    assert ("g_norm" in variables["params"]["lstm_layers_0"]) is layer_norm
    targets = rng.integers(0, V, (3, 4))
    with torch.no_grad():
        ref_output, _, ref_state = reference(_t(targets), torch.tensor([4, 4, 4]))
    output, _, state = predictor.apply(variables, targets, jnp.array([4, 4, 4]))
    _close(output, ref_output)
    _close(state.cell, torch.stack([c for _, c in ref_state]))

    ref_joiner = rnnt._Joiner(16, V, activation=activation).eval()
    joiner = Joiner(TransducerConfig(encoding_dim=16, num_symbols=V, joiner_activation=activation))
    joiner_variables = from_torchaudio(joiner, ref_joiner.state_dict())
    src, tgt = (
        rng.standard_normal((2, 3, 16)).astype(np.float32),
        rng.standard_normal((2, 4, 16)).astype(np.float32),
    )
    with torch.no_grad():
        ref_logits = ref_joiner(_t(src), torch.tensor([3, 3]), _t(tgt), torch.tensor([4, 4]))[0]
    _close(joiner.apply(joiner_variables, src, tgt, method="logits"), ref_logits)


# ----------------------------------------------------------------------------------------------------
# Padded batches: each sequence as if alone, whatever the padding holds


def test_padded_batch_equals_torchaudio_alone(pair, fns, rng):
    _, _, reference = pair
    source_lengths, target_lengths = [40, 27, 18], [5, 2, 3]
    B, T, U = 3, max(source_lengths), max(target_lengths)
    sources = _sources(rng, B, T + R, scale=1e3)  # junk everywhere, valid parts overwritten below
    targets = rng.integers(-1000, 1000, (B, U))  # junk ids, even out of range, in the padding
    alone = []
    for b, (n, u) in enumerate(zip(source_lengths, target_lengths, strict=True)):
        sources[b, : n + R] = _sources(rng, 1, n + R)[0]
        targets[b, :u] = rng.integers(0, V, u)
        with torch.no_grad():
            alone.append(
                reference(
                    _t(sources[b : b + 1, : n + R]),
                    torch.tensor([n]),
                    _t(targets[b : b + 1, :u]),
                    torch.tensor([u]),
                )
            )
    logits, out_lengths, out_target_lengths, state = fns["forward"](
        sources, jnp.array(source_lengths), targets, jnp.array(target_lengths)
    )
    assert np.isfinite(np.asarray(logits)).all()
    encodings, encoding_lengths = fns["transcribe"](sources, jnp.array(source_lengths))
    streamed, _, _ = fns["stream"](sources, jnp.array(source_lengths))
    for b, (n, u) in enumerate(zip(source_lengths, target_lengths, strict=True)):
        ref_logits, ref_lengths, _, ref_state = alone[b]
        t = int(ref_lengths[0])
        assert int(out_lengths[b]) == t == n // STRIDE
        _close(logits[b, :t, :u], ref_logits[0])
        for layer, (h, c) in enumerate(ref_state):
            _close(state.hidden[layer, b], h[0])
            _close(state.cell[layer, b], c[0])
        with torch.no_grad():
            ref_encodings, _ = reference.transcribe(_t(sources[b : b + 1, : n + R]), torch.tensor([n]))
        _close(encodings[b, :t], ref_encodings[0])
        _close(streamed[b, :t], ref_encodings[0])
    np.testing.assert_array_equal(out_target_lengths, target_lengths)


def test_streaming_batch_with_partial_and_finished_streams(pair, fns, rng):
    """Streams of different lengths in one batch: per-step lengths with a partial last chunk (odd length, so
    time reduction drops a valid frame) and finished streams (lengths 0) give each its offline result."""
    lengths = np.array([40, 21, 8])
    B, segments = 3, 5
    sources = _sources(rng, B, segments * S + R, scale=1e3)
    for b, n in enumerate(lengths):
        sources[b, : n + R] = _sources(rng, 1, n + R)[0]
    offline, _ = fns["transcribe"](sources, jnp.asarray(lengths))
    state, outputs = None, []
    for i in range(segments):
        valid = np.clip(lengths - i * S, 0, S)
        chunk = np.stack(
            [
                np.concatenate([sources[b, i * S : i * S + S], sources[b, i * S + v : i * S + v + R]])
                for b, v in enumerate(valid)
            ]
        )
        step_lengths = np.where(valid > 0, valid + R, 0)
        output, out_lengths, state = fns["step"](chunk, jnp.asarray(step_lengths), state)
        np.testing.assert_array_equal(out_lengths, np.maximum(step_lengths // STRIDE - R // STRIDE, 0))
        outputs.append(np.asarray(output))
    streamed = np.concatenate(outputs, axis=1)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(streamed[b, : n // STRIDE], offline[b, : n // STRIDE], atol=ATOL)
    np.testing.assert_array_equal(state.positions, (-(-lengths // S)) * S // STRIDE)


# ----------------------------------------------------------------------------------------------------
# Compilation, training mode, dtypes


def test_stream_is_one_scan(pair):
    model, variables, _ = pair
    sources, lengths = jnp.zeros((2, 6 * S + R, 8)), jnp.array([48, 30])
    jaxpr = jax.make_jaxpr(lambda x, n: model.apply(variables, x, n, method="transcribe_in_segments"))(
        sources, lengths
    )
    scans = [eqn for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == "scan"]
    assert len(scans) == 1 and scans[0].params["length"] == 6


def test_training_mode_applies_dropout_and_has_gradients(pair, fns, rng):
    model, variables, _ = pair
    sources, targets = _sources(rng, 1, 24 + R), rng.integers(0, V, (1, 3))
    args = (sources, jnp.array([24]), targets, jnp.array([3]))

    def loss(params, key):
        logits = model.apply({"params": params}, *args, deterministic=False, rngs={"dropout": key})[0]
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    value_a, grads = value_and_grad(variables["params"], jax.random.key(1))
    value_b, _ = value_and_grad(variables["params"], jax.random.key(2))
    deterministic = jnp.mean(jax.nn.log_softmax(fns["forward"](*args)[0])[..., 0])
    assert value_a != value_b and value_a != deterministic
    norms = jax.tree.leaves(jax.tree.map(lambda g: float(jnp.abs(g).max()), grads))
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)


def test_bfloat16_computation_is_close(pair, fns, rng):
    _, variables, _ = pair
    model16 = emformer_rnnt_model(**CONFIG, dtype=jnp.bfloat16)
    sources, targets = _sources(rng, 1, 24 + R), rng.integers(0, V, (1, 3))
    args = (sources, jnp.array([24]), targets, jnp.array([3]))
    logits16 = jax.jit(model16.apply)(variables, *args)[0]
    logits32 = fns["forward"](*args)[0]
    assert logits16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(logits16, np.float32), logits32, atol=0.15)


def test_base_configuration_and_init(torchaudio_ref):
    model = emformer_rnnt_base(4097)
    encoder = model.config.encoder_config  # the Emformer's, on frames reduced 4 to 1
    assert (encoder.segment_length, encoder.right_context_length, encoder.input_dim) == (
        4,
        1,
        512,
    )
    assert model.segment_length == 16 and model.right_context_length == 4 and model.num_symbols == 4097
    shapes = jax.eval_shape(model.init, jax.random.key(0), *model.example_inputs())
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    reference = sum(p.numel() for p in torchaudio_ref.models.emformer_rnnt_base(4097).parameters())
    assert count == reference
    state = model.init_transcriber_state(3)
    assert state.left_context_keys.shape == (20, 3, 30, 512)
    assert model.init_predictor_state(3).hidden.shape == (3, 3, 512)


def test_init_is_torch_like():
    """The predictor's and joiner's initialisation (the transcriber's is the Emformer's and _nn.dense's)."""
    config = TransducerConfig(
        num_symbols=V, encoding_dim=16, symbol_embedding_dim=64, num_lstm_layers=1, lstm_layer_norm=True
    )
    predictor, joiner = Predictor(config), Joiner(config)
    params = jax.jit(predictor.init)(jax.random.key(0), *predictor.example_inputs())["params"]
    assert 0.9 < np.asarray(params["embedding"]["embedding"]).std() < 1.1  # N(0, 1) as torch.nn.Embedding
    x2g = np.asarray(params["lstm_layers_0"]["x2g"]["kernel"])  # U(-1/sqrt(64), 1/sqrt(64)), no bias
    assert 0.12 < np.abs(x2g).max() <= 0.125 and "bias" not in params["lstm_layers_0"]["x2g"]
    np.testing.assert_array_equal(params["lstm_layers_0"]["g_norm"]["scale"], 1.0)
    bias = np.asarray(joiner.init(jax.random.key(1), *joiner.example_inputs())["params"]["linear"]["bias"])
    assert 0.15 < np.abs(bias).max() <= 0.25  # U(-1/sqrt(16), 1/sqrt(16)) as torch.nn.Linear


# ----------------------------------------------------------------------------------------------------
# Errors


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="segment_length: expected a multiple of time_reduction_stride"):
        emformer_rnnt_model(**{**CONFIG, "segment_length": 7})
    with pytest.raises(
        ValueError, match="right_context_length: expected a multiple of time_reduction_stride"
    ):
        emformer_rnnt_model(**{**CONFIG, "right_context_length": 3})
    with pytest.raises(ValueError, match="num_heads"):
        emformer_rnnt_model(**{**CONFIG, "transformer_num_heads": 3})
    with pytest.raises(ValueError, match="activation"):
        emformer_rnnt_model(**{**CONFIG, "transformer_activation": "tanh"})
    with pytest.raises(ValueError, match="lstm_dropout"):
        emformer_rnnt_model(**{**CONFIG, "lstm_dropout": 1.5})
    with pytest.raises(ValueError, match="activation: expected one of"):
        Joiner(TransducerConfig(encoding_dim=16, num_symbols=V, joiner_activation="gelu"))
    with pytest.raises(TypeError):
        emformer_rnnt_model(**{k: v for k, v in CONFIG.items() if k != "lstm_dropout"})


def test_bad_inputs_are_rejected(pair, rng):
    model, variables, _ = pair
    sources, targets = _sources(rng, 2, 24 + R), rng.integers(0, V, (2, 3))
    good = (sources, jnp.array([24, 20]), targets, jnp.array([3, 2]))

    def call(*args, method=None):
        return model.apply(variables, *args, method=method)

    with pytest.raises(ValueError, match=r"targets: expected values in \[0, 11\), got \[11\]"):
        call(*good[:2], np.where(np.arange(3) == 0, 11, targets), good[3])
    with pytest.raises(ValueError, match="source_lengths: expected shape"):
        call(sources, jnp.array([24]), *good[2:])
    with pytest.raises(ValueError, match="target_lengths: expected shape"):
        call(*good[:3], jnp.array([3, 2, 1]))
    with pytest.raises(ValueError, match=r"source_lengths: expected values in \[0, 24\], got \[25\]"):
        call(sources, jnp.array([25, 20]), *good[2:])
    with pytest.raises(ValueError, match=r"target_lengths: expected values in \[0, 3\], got \[4\]"):
        call(*good[:3], jnp.array([4, 2]))
    with pytest.raises(TypeError, match="target_lengths: expected an integer array"):
        call(*good[:3], jnp.array([3.0, 2.0]))
    with pytest.raises(ValueError, match="sources: expected shape"):
        call(sources[..., :5], *good[1:])
    with pytest.raises(
        ValueError, match="sources: expected segment_length \\+ right_context_length = 12 frames"
    ):
        call(sources[:, :10], jnp.array([10, 10]), None, method="transcribe_streaming")
    with pytest.raises(ValueError, match="state: memory has shape"):
        call(
            sources[:, :12],
            jnp.array([12, 12]),
            model.init_transcriber_state(3),
            method="transcribe_streaming",
        )
    with pytest.raises(ValueError, match="state: hidden has shape"):
        call(targets, jnp.array([3, 2]), model.init_predictor_state(1), method="predict")
    with pytest.raises(ValueError, match="target_encodings: expected shape"):
        call(jnp.zeros((2, 4, 16)), jnp.zeros((2, 3, 8)), method="joint_logits")
    with pytest.raises(ValueError, match="sources: expected at least"):
        call(sources[:, :5], jnp.array([1, 1]), method="transcribe")


def test_unbound_helpers_need_no_parameters():
    model = emformer_rnnt_model(**CONFIG)
    assert isinstance(model, RNNT) and isinstance(model.transcriber, nn.Module)
    state = model.init_transcriber_state(4)
    assert state.positions.shape == (4,) and state.memory.shape == (2, 4, 2, 16)
    predictor_state = model.init_predictor_state(4)
    assert predictor_state.cell.shape == (2, 4, 12) and predictor_state.batch_size == 4
    restored = PredictorState.from_torchaudio([[torch.ones(4, 12), torch.zeros(4, 12)]] * 2)
    np.testing.assert_array_equal(restored.to_torchaudio()[1][0], np.ones((4, 12)))


# ----------------------------------------------------------------------------------------------------
# The same transducer around a ConvEmformer

CONV_CONFIG = {**CONFIG, "transformer_kernel_size": 3, "transformer_conv_activation": "silu"}


@pytest.fixture(scope="module")
def conv_pair(torchaudio_ref):
    """Our conv_emformer_rnnt_model; torchaudio's RNNT whose transcriber.transformer is the ConvEmformer."""
    from streamformer.convert.cli import torchaudio_model

    torch.manual_seed(2)
    reference = torchaudio_model("conv_emformer_rnnt_model", CONV_CONFIG)
    model = conv_emformer_rnnt_model(**CONV_CONFIG)
    variables = from_torchaudio(model, reference.state_dict())
    return model, variables, reference


def test_conv_emformer_rnnt_matches_torchaudio(conv_pair, rng):
    model, variables, reference = conv_pair
    assert "conv" in variables["params"]["transcriber"]["transformer"]["emformer_layers_0"]
    assert model.init_transcriber_state(2).conv_cache.shape == (2, 2, 2, 16)
    segments, U = 4, 3
    T = segments * S
    sources, targets = _sources(rng, 1, T + R), rng.integers(0, V, (1, U))
    forward = jax.jit(lambda *args: model.apply(variables, *args))
    logits, *_ = forward(sources, jnp.array([T]), targets, jnp.array([U]))
    with torch.no_grad():
        ref_logits = reference(_t(sources), torch.tensor([T]), _t(targets), torch.tensor([U]))[0]
    _close(logits, ref_logits)
    # Streaming loop against torchaudio's.
    step = jax.jit(lambda *args: model.apply(variables, *args, method="transcribe_streaming"))
    state, theirs_state = model.init_transcriber_state(1), None
    for i in range(segments):
        chunk = sources[:, i * S : i * S + S + R]
        output, _, state = step(chunk, jnp.array([S + R]), state)
        with torch.no_grad():
            ref_output, _, theirs_state = reference.transcribe_streaming(
                _t(chunk), torch.tensor([S + R]), theirs_state
            )
        _close(output, ref_output)
    assert step._cache_size() == 1


def test_conv_emformer_rnnt_padded_batch_equals_torchaudio_alone(conv_pair, rng):
    model, variables, reference = conv_pair
    lengths = [32, 19]
    T = max(lengths)
    sources = _sources(rng, 2, T + R, scale=1e3)
    for b, n in enumerate(lengths):
        sources[b, : n + R] = _sources(rng, 1, n + R)[0]
    encodings, out_lengths = jax.jit(lambda *a: model.apply(variables, *a, method="transcribe"))(
        sources, jnp.array(lengths)
    )
    for b, n in enumerate(lengths):
        with torch.no_grad():
            ref_encodings, _ = reference.transcribe(_t(sources[b : b + 1, : n + R]), torch.tensor([n]))
        assert int(out_lengths[b]) == n // STRIDE
        _close(encodings[b, : n // STRIDE], ref_encodings[0])


def test_joiner_fn_drives_the_memory_efficient_loss(pair, rng):
    """joiner_fn plugs into rnnt_loss_from_encodings: same loss and gradients as the full joint."""
    from streamformer.losses import rnnt_loss, rnnt_loss_from_encodings

    model, variables, _ = pair
    source_encodings = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
    target_encodings = jnp.asarray(rng.standard_normal((2, 4, 16)), jnp.float32)
    targets, source_lengths, target_lengths = (
        jnp.asarray(rng.integers(1, V, (2, 3))),
        jnp.array([6, 4]),
        jnp.array([3, 2]),
    )

    def chunked(params):
        join = joiner_fn(model, {"params": params})
        return rnnt_loss_from_encodings(
            source_encodings,
            target_encodings,
            join,
            targets,
            source_lengths,
            target_lengths,
            blank=0,
            chunk_size=4,
        )

    def full(params):
        logits = joiner_fn(model, {"params": params})(source_encodings, target_encodings)
        return rnnt_loss(logits, targets, source_lengths, target_lengths, blank=0)

    (a, grad_a), (b, grad_b) = (
        jax.value_and_grad(chunked)(variables["params"]),
        jax.value_and_grad(full)(variables["params"]),
    )
    np.testing.assert_allclose(a, b, rtol=1e-5)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-5), grad_a, grad_b)
    assert float(jnp.abs(grad_a["joiner"]["linear"]["kernel"]).max()) > 0
