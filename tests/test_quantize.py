"""Quantised inference (``streamformer.quantize``): int8 and bfloat16 weights.

- Parity: each quantised product, and the whole quantised streaming step, equal a plain numpy reference that
  dequantises the stored weights (and the per-row int8 activations) and multiplies in float64.
- The quantised pair works wherever the float32 pair does for inference: ``infer``/``transcribe_streaming``
  equal the offline forward, greedy and modified beam search, the ``StreamingDecoder``, the exported artifact.
- Refusals and errors: converting a quantised model or tree to torchaudio, quantising twice, training with
  quantised weights; bad arguments name themselves.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import streamformer
from streamformer import ConvEmformer, Emformer, convert, quantize
from streamformer._nn import QuantizedDense, QuantizedEmbed, quantize_rows
from streamformer.decoding import GreedySearch, ModifiedBeamSearch, StreamingDecoder, decode
from streamformer.decoding.export import export_transducer, load_exported
from tests.decoding_cases import BLANK, padded_sources, tiny_model

FORMATS = ("int8", "bfloat16")


@pytest.fixture(scope="module")
def float_pair():
    return tiny_model()


@pytest.fixture(scope="module", params=FORMATS)
def quantized(request, float_pair):
    model, variables = float_pair
    return (request.param, *quantize(model, variables, request.param))


# -- the numpy reference -------------------------------------------------------------------------------------


def _bfloat16(x) -> np.ndarray:
    """x rounded to bfloat16 and back to float64 (numpy has no bfloat16 arithmetic)."""
    return np.asarray(jnp.asarray(x, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32), np.float64)


def reference_dense(params: dict, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quantised Dense layer in numpy: dequantise the stored weights, quantise and dequantise each row of
    x as the layer does (int8: symmetric, max |row| / 127), multiply in float64. Returns (y, tolerance): an
    activation whose x / step lies on a rounding boundary may round to the neighbouring integer under XLA's
    arithmetic, so the tolerance allows two such flips per row."""
    x = np.asarray(x, np.float64)
    rows = x.reshape(-1, x.shape[-1])
    if "int8_kernel" in params:
        weight = np.asarray(params["int8_kernel"], np.float64) * np.asarray(params["scale"], np.float64)
        peak = np.max(np.abs(rows), axis=1, keepdims=True)
        step = np.where(peak > 0, peak / 127.0, 1.0)
        y = (np.rint(rows / step) * step) @ weight
        tolerance = 2 * step * np.max(np.abs(weight)) + 1e-5 * np.abs(y)
    else:
        weight = np.asarray(jnp.asarray(params["kernel"]).astype(jnp.float32), np.float64)
        y = _bfloat16(rows) @ weight
        tolerance = 1e-5 * (1 + np.abs(y))
    if "bias" in params:
        y = y + np.asarray(params["bias"], np.float64)
    shape = (*x.shape[:-1], y.shape[-1])
    return y.reshape(shape), tolerance.reshape(shape) if tolerance.ndim == 2 else tolerance


def numpy_matmuls(module_type=QuantizedDense):
    """A Flax interceptor that runs every quantised Dense layer as ``reference_dense`` (eagerly, in numpy)."""

    def interceptor(next_fun, args, kwargs, context):
        if not isinstance(context.module, module_type) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        params = {name: np.asarray(value) for name, value in context.module.variables["params"].items()}
        y, _ = reference_dense(params, np.asarray(args[0]))
        return jnp.asarray(y, jnp.float32)

    return nn.intercept_methods(interceptor)


@pytest.mark.parametrize("weights", FORMATS)
def test_quantized_dense_equals_numpy_dequantise_then_matmul(weights, rng):
    kernel = rng.standard_normal((24, 40)).astype(np.float32)
    kernel[:, 3] = 0.0  # an output channel of zeros: scale 1, exact zeros
    bias = rng.standard_normal(40).astype(np.float32)
    x = rng.standard_normal((3, 5, 24)).astype(np.float32) * np.array([1e-3, 1.0, 30.0])[:, None, None]
    x[1, 2] = 0.0  # a row of zeros
    layer = QuantizedDense(40, weights=weights)
    model = nn.Dense(40)
    float_params = {"kernel": kernel, "bias": bias}
    _, params = quantize_pair_of(model, float_params, layer, x)
    got = np.asarray(jax.jit(layer.apply)({"params": params}, x))
    want, tolerance = reference_dense(params, x)
    assert got.dtype == np.float32 and got.shape == (3, 5, 40)
    assert np.all(np.abs(got - want) <= tolerance)
    assert np.all(got[1, 2] == bias)  # zero row: the bias alone
    one_row = np.asarray(jax.jit(layer.apply)({"params": params}, x[2, :1]))  # runs padded to two rows
    np.testing.assert_allclose(one_row, got[2, :1], rtol=1e-6)
    # and close to the float32 layer (the quantisation error itself)
    exact = x @ kernel + bias
    assert np.abs(got - exact).max() <= (0.02 if weights == "int8" else 0.01) * np.abs(exact).max()


def quantize_pair_of(float_module, float_params, quantized_module, x):
    """The quantised parameters of a single layer, through the same conversion ``quantize`` uses."""
    from streamformer.quantization import _convert_module

    target = jax.eval_shape(quantized_module.init, jax.random.key(0), x)["params"]
    return quantized_module, _convert_module(("layer",), target, float_params)


def test_quantize_rows_is_symmetric_per_row(rng):
    matrix = rng.standard_normal((6, 50)).astype(np.float32) * rng.uniform(0.01, 10, (6, 1)).astype(
        np.float32
    )
    matrix[2] = 0.0
    values, scales = quantize_rows(matrix)
    assert values.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (6,)
    np.testing.assert_allclose(
        scales[[0, 1, 3, 4, 5]], np.abs(matrix).max(1)[[0, 1, 3, 4, 5]] / 127, rtol=1e-6
    )
    assert scales[2] == 1.0 and not values[2].any()
    assert np.abs(values).max() == 127 and values.min() >= -127
    assert np.all(np.abs(values * scales[:, None] - matrix) <= scales[:, None] / 2 * (1 + 1e-5))


def test_embedding_lookup_dequantises_its_rows(float_pair):
    model, variables = float_pair
    table = np.asarray(variables["params"]["predictor"]["embedding"]["embedding"])
    tokens = jnp.array([[0, 3, 10]])
    for weights in FORMATS:
        q_model, q_variables = quantize(model, variables, weights)
        params = q_variables["params"]["predictor"]["embedding"]
        looked_up = QuantizedEmbed(table.shape[0], table.shape[1], weights=weights).apply(
            {"params": params}, tokens
        )
        if weights == "int8":
            want = np.asarray(params["int8_embedding"], np.float32) * np.asarray(params["scale"])[:, None]
        else:
            want = np.asarray(params["embedding"].astype(jnp.float32))
        np.testing.assert_array_equal(np.asarray(looked_up)[0], want[[0, 3, 10]])


def test_quantized_step_equals_numpy_reference(quantized):
    """The whole streaming step (every matrix of the transcriber) with each quantised product replaced by the
    numpy reference, against the compiled quantised step."""
    weights, model, variables = quantized
    x, lengths = padded_sources()
    S, R = model.segment_length, model.right_context_length
    chunk, chunk_lengths = x[:, : S + R], np.full((3,), S + R, np.int32)
    step = jax.jit(lambda v, c, n: model.apply(v, c, n, None, method="transcribe_streaming"))
    got, _, got_state = step(variables, chunk, chunk_lengths)
    with numpy_matmuls():
        want, _, want_state = model.apply(
            variables, chunk, chunk_lengths, None, method="transcribe_streaming"
        )
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=1e-4)
    for a, b in zip(jax.tree_util.tree_leaves(got_state), jax.tree_util.tree_leaves(want_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-4, rtol=1e-4)


def test_quantized_variables_layout_and_size(float_pair, quantized):
    weights, model, variables = quantized
    float_model, float_variables = float_pair
    assert model.config == dataclasses.replace(float_model.config, weights=weights)
    joiner = variables["params"]["joiner"]["linear"]
    V, D = float_model.num_symbols, float_model.config.encoding_dim
    if weights == "int8":
        assert joiner["int8_kernel"].shape == (D, V) and joiner["int8_kernel"].dtype == jnp.int8
        assert joiner["scale"].shape == (V,) and joiner["bias"].dtype == jnp.float32
    else:
        assert joiner["kernel"].shape == (D, V) and joiner["kernel"].dtype == jnp.bfloat16
    matrices = lambda params: sum(  # noqa: E731
        np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(params) if np.asarray(leaf).ndim == 2
    )
    ratio = matrices(variables) / matrices(float_variables)
    assert ratio < (0.3 if weights == "int8" else 0.51)
    assert streamformer.is_quantized(model) and streamformer.is_quantized(variables=variables)
    assert not streamformer.is_quantized(float_model, float_variables)


def test_quantized_streaming_equals_quantized_offline_and_stays_close_to_float(float_pair, quantized):
    """Activations are quantised per row, so a row's result does not depend on what else is in the batch:
    streaming equals offline with quantised weights, as with float32 ones."""
    weights, model, variables = quantized
    float_model, float_variables = float_pair
    x, lengths = padded_sources()
    offline, out_lengths = jax.jit(lambda v: model.apply(v, x, lengths, method="transcribe"))(variables)
    streamed, _, _ = jax.jit(lambda v: model.apply(v, x, lengths, method="transcribe_in_segments"))(variables)
    reference, _ = jax.jit(lambda v: float_model.apply(v, x, lengths, method="transcribe"))(float_variables)
    for b, n in enumerate(np.asarray(out_lengths)):
        np.testing.assert_allclose(np.asarray(streamed[b, :n]), np.asarray(offline[b, :n]), atol=2e-3)
        error = np.abs(np.asarray(offline[b, :n]) - np.asarray(reference[b, :n])).max()
        assert error < 0.1 * np.abs(np.asarray(reference[b, :n])).max()


def test_quantized_pair_decodes_offline_and_streaming_alike(quantized):
    """Greedy and modified beam search (bfloat16: greedy; its products are the int8 pair's code path but for
    the dot), offline and with the StreamingDecoder."""
    weights, model, variables = quantized
    x, lengths = padded_sources()
    for search in [GreedySearch()] + ([ModifiedBeamSearch(3)] if weights == "int8" else []):
        offline = decode(model, variables, x, lengths, search, blank=BLANK)
        decoder = StreamingDecoder(model, variables, search=search, blank=BLANK)
        state = decoder.init(3)
        for chunk, chunk_lengths in model.layout.iter_chunks(x, lengths):
            state = decoder.step(state, chunk, chunk_lengths)
        streamed = decoder.result(state)
        assert [h[0].tokens for h in streamed] == [h[0].tokens for h in offline]
        assert any(h[0].tokens for h in offline)


def test_exported_quantized_artifact_equals_live_and_is_smaller(float_pair, quantized, tmp_path):
    weights, model, variables = quantized
    x, lengths = padded_sources()
    x, lengths = x[:2, : 40 + model.right_context_length], lengths[:2]
    export_transducer(
        model, variables, tmp_path / "q", batch_size=2, max_frames=40, max_tokens=64, blank=BLANK
    )
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["config"]["weights"] == weights
    artifact = load_exported(tmp_path / "q")
    decoder = StreamingDecoder(model, variables, search=GreedySearch(), blank=BLANK, max_tokens=64)
    state, live = artifact.init_state(), decoder.init(2)
    for chunk, chunk_lengths in model.layout.iter_chunks(x, lengths):
        state, tokens, _, counts = artifact.step(state, chunk, chunk_lengths)
        live = decoder.step(live, chunk, chunk_lengths)
    np.testing.assert_array_equal(counts, np.asarray(live.search.lengths))
    np.testing.assert_array_equal(tokens, np.asarray(live.search.tokens))
    float_bytes = sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(float_pair[1]))
    assert (tmp_path / "q" / "params.npz").stat().st_size < float_bytes


def test_export_command_quantizes(float_pair, tmp_path):
    """``python -m train export --quantize int8`` (export_run): the artifact holds the int8 pair."""
    from streamformer.features import GlobalStats
    from streamformer.train.commands.export import export_run

    model, variables = float_pair
    tokenizer = SimpleNamespace(blank_id=BLANK, model_path=None)
    run = SimpleNamespace(
        tokenizer=tokenizer, stats=GlobalStats(np.zeros(8, np.float32), np.ones(8, np.float32))
    )
    manifest = export_run(run, model, variables, tmp_path / "art", max_frames=16, quantize="int8")
    assert manifest["config"]["weights"] == "int8"
    matrices = sum(
        leaf.dtype == jnp.int8 for leaf in jax.tree_util.tree_leaves(quantize(model, variables, "int8")[1])
    )
    with np.load(tmp_path / "art" / "params.npz") as params:
        assert sum(params[name].dtype == np.int8 for name in params.files) == matrices == 19


@pytest.mark.parametrize("encoder", ["emformer", "conv_emformer"])
def test_quantized_encoders(encoder, rng):
    """Emformer and ConvEmformer on their own: quantised like the transducer (the same Dense replacement);
    ConvEmformer's convolution module streams as it forwards with int8 weights (bfloat16 runs the same
    wiring)."""
    kw = dict(segment_length=4, right_context_length=1, left_context_length=4, max_memory_size=2)
    model = (
        Emformer(16, 2, 32, 1, **kw)
        if encoder == "emformer"
        else ConvEmformer(16, 2, 32, 1, kernel_size=3, **kw)
    )
    x = jnp.asarray(rng.standard_normal((2, 13, 16)), jnp.float32)
    lengths = jnp.array([12, 7])
    variables = jax.jit(model.init)(jax.random.key(0), x, lengths)
    reference, _ = jax.jit(model.apply)(variables, x, lengths)
    q_model, q_variables = quantize(model, variables, "int8")
    assert q_model.config.weights == "int8" and type(q_model) is type(model)
    forward, _ = jax.jit(q_model.apply)(q_variables, x, lengths)
    for b, n in enumerate(np.asarray(lengths)):
        assert np.abs(np.asarray(forward[b, :n] - reference[b, :n])).max() < 0.1
    if encoder == "conv_emformer":
        streamed, _, _ = jax.jit(lambda v: q_model.apply(v, x, lengths, method="stream"))(q_variables)
        for b, n in enumerate(np.asarray(lengths)):
            np.testing.assert_allclose(np.asarray(streamed[b, :n]), np.asarray(forward[b, :n]), atol=5e-3)


# -- refusals and errors -------------------------------------------------------------------------------------


def test_conversion_to_torchaudio_is_refused(float_pair, quantized):
    weights, model, variables = quantized
    float_model, float_variables = float_pair
    with pytest.raises(
        convert.ConversionError, match=f"model: to_torchaudio needs a float32 model, got one with {weights}"
    ):
        convert.to_torchaudio(model, variables)
    with pytest.raises(convert.ConversionError, match="variables: to_torchaudio needs float32 variables"):
        convert.to_torchaudio(float_model, variables)
    state_dict = convert.to_torchaudio(float_model, float_variables)
    with pytest.raises(convert.ConversionError, match="model: from_torchaudio needs a float32 model"):
        convert.from_torchaudio(model, state_dict)


def test_bad_arguments_name_themselves(float_pair, quantized):
    model, variables = float_pair
    weights, q_model, q_variables = quantized
    with pytest.raises(ValueError, match=r"weights: expected one of \['bfloat16', 'int8'\], got 'int4'"):
        quantize(model, variables, "int4")
    with pytest.raises(
        ValueError, match=f"model: expected a float32 model, got one whose weights are already '{weights}'"
    ):
        quantize(q_model, q_variables, "int8")
    with pytest.raises(ValueError, match="variables: expected float32 variables, got int8 or bfloat16"):
        quantize(model, q_variables, "int8")
    with pytest.raises(
        TypeError, match="model: expected a streamformer RNNT, Emformer or ConvEmformer, got str"
    ):
        quantize("model", variables, "int8")
    with pytest.raises(TypeError, match="variables: expected the model's variables, a dict with 'params'"):
        quantize(model, [1, 2], "int8")
    params = dict(variables["params"])
    del params["joiner"]
    with pytest.raises(
        ValueError, match="variables: expected the float32 parameters of this RNNT; differing: joiner"
    ):
        quantize(model, {"params": params}, "int8")
    with pytest.raises(ValueError, match="weights: expected one of"):
        dataclasses.replace(model.config, weights="int4")


def test_training_refuses_quantized_weights():
    from streamformer.train.config import ModelConfig

    with pytest.raises(
        ValueError, match="model.weights: expected 'float32' .* got 'int8'; quantise a trained checkpoint"
    ):
        ModelConfig(weights="int8")
