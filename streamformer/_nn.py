"""Building blocks initialised as PyTorch initialises them, so training from scratch starts as in torchaudio, and
their inference forms with quantised weights.

PyTorch's defaults: Linear and Conv1d weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm ones and
zeros with eps 1e-5, Embedding N(0, 1). Flax's defaults differ (lecun normal, zero bias, eps 1e-6), hence these.

Weights (``EncoderConfig.weights``, ``TransducerConfig.weights``): every matrix of a model (its Dense layers and
the predictor's embedding) is stored as "float32" (training, conversion), "bfloat16" or "int8".
``streamformer.quantize`` turns float32 variables into the other two; ``dense`` and ``embedding`` build the
layer each format needs, so no model module knows about formats beyond passing ``weights`` on.

- "bfloat16": the kernel in bfloat16; activations are rounded to bfloat16 and the product accumulates in
  float32 (the matmul GPUs and TPUs run natively, and CPUs with AVX512-BF16 or AMX for many rows).
- "int8": the kernel as int8 (in, out), as the float32 kernel, with one symmetric float32 scale per output
  channel (``quantize_rows`` on its columns); at run time each row of activations is quantised to int8 with
  its own scale and the product runs as XLA's int8 x int8 -> int32 dot, rescaled by both scales (torch's
  dynamic quantisation, with per-row rather than per-tensor activation scales). Dequantising the weights to
  float32 before a float matmul would be the exact weight-only form, but XLA on CPUs does not fuse that
  conversion into the dot: it writes the whole float32 matrix first and ran 3-6x slower than float32 weights
  (benchmarks/quantize.md).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any

#: How a model stores its matrices (``weights`` of EncoderConfig and TransducerConfig).
WEIGHT_FORMATS = ("float32", "bfloat16", "int8")

LAYER_NORM_EPS = 1e-5

# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): what kaiming_uniform_(a=sqrt(5)) gives PyTorch's Linear and Conv1d weights.
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def xavier_uniform(gain: float):
    """torch.nn.init.xavier_uniform_(gain=gain): U(-a, a), a = gain * sqrt(6 / (fan_in + fan_out))."""
    return nn.initializers.variance_scaling(gain * gain, "fan_avg", "uniform")


def dense(
    features: int,
    *,
    fan_in: int,
    use_bias: bool = True,
    gain: float | None = None,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    weights: str = "float32",
    name: str | None = None,
) -> nn.Module:
    """A Dense layer initialised like torch.nn.Linear (or with xavier_uniform(gain) on the weight); with
    ``weights`` "bfloat16" or "int8", its inference form ``QuantizedDense`` (same name, so same place in the
    variables)."""
    if weights != "float32":
        return QuantizedDense(features, weights=weights, use_bias=use_bias, dtype=dtype, name=name)
    return nn.Dense(
        features,
        use_bias=use_bias,
        kernel_init=torch_default_kernel_init if gain is None else xavier_uniform(gain),
        bias_init=torch_default_bias_init(fan_in),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def jointly(fn, *blocks: jax.Array, axis: int = 2) -> list[jax.Array]:
    """``fn`` applied once to ``blocks`` concatenated along ``axis``, split back into blocks of their sizes.

    For the row-wise layers (Dense, layer norm, feed-forward) that a layer applies to its right-context
    block, its segment and its summary: one matmul per weight matrix instead of one per block. A streaming
    step multiplies a few rows by every matrix of the model, so its time is reading the weights; applying a
    Dense layer to the segment's rows and again to the right context's rows read that layer's weights twice.
    """
    sizes = np.cumsum([block.shape[axis] for block in blocks])[:-1]
    return jnp.split(fn(jnp.concatenate(blocks, axis=axis)), sizes, axis=axis)


def embedding(
    num_embeddings: int,
    features: int,
    *,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    weights: str = "float32",
    name: str | None = None,
) -> nn.Module:
    """torch.nn.Embedding: N(0, 1); with ``weights`` "bfloat16" or "int8", its inference form
    ``QuantizedEmbed``."""
    if weights != "float32":
        return QuantizedEmbed(num_embeddings, features, weights=weights, dtype=dtype, name=name)
    return nn.Embed(
        num_embeddings,
        features,
        embedding_init=nn.initializers.normal(1.0),
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
    )


def layer_norm(
    *,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
    epsilon: float = LAYER_NORM_EPS,
    name: str | None = None,
) -> nn.LayerNorm:
    """torch.nn.LayerNorm: eps 1e-5 (Flax's default is 1e-6), ones and zeros."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)


ACTIVATIONS = {
    "relu": nn.relu,
    # torch.nn.GELU() is the exact erf form; jax.nn.gelu defaults to the tanh approximation.
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "silu": nn.silu,
}


def activation(name: str, argument: str = "activation"):
    if name not in ACTIVATIONS:
        raise ValueError(f"{argument}: expected one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]


# -- quantised weights (inference) ---------------------------------------------------------------------------


def quantize_rows(matrix) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantisation, one scale per row: matrix (R, C) -> (int8 values (R, C), float32 scales
    (R,)) with matrix ~= values * scales[:, None]; a row of zeros gets scale 1."""
    matrix = np.asarray(matrix, np.float32)
    peak = np.max(np.abs(matrix), axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    values = np.clip(np.rint(matrix / scales[:, None]), -127, 127).astype(np.int8)
    return values, scales


def int8_matmul(rows: jax.Array, kernel: jax.Array, scales: jax.Array) -> jax.Array:
    """rows (N, I) float times int8 weights ``kernel`` (I, O) with one scale per output channel ``scales`` (O,):
    (N, O) float32. Each row is quantised to int8 with its own symmetric scale (max |row| / 127); the dot runs
    in int8 with int32 accumulation and is rescaled by both scales."""
    peak = jnp.max(jnp.abs(rows), axis=1, keepdims=True)
    step = jnp.where(peak > 0, peak / 127.0, 1.0)
    quantized = jnp.round(rows / step).astype(jnp.int8)
    accumulated = lax.dot_general(
        quantized, kernel, (((1,), (0,)), ((), ())), preferred_element_type=jnp.int32
    )
    return accumulated.astype(jnp.float32) * step * scales


def bfloat16_matmul(rows: jax.Array, kernel: jax.Array) -> jax.Array:
    """rows (N, I) float times bfloat16 weights ``kernel`` (I, O): the rows rounded to bfloat16, the products
    accumulated in float32. (N, O) float32."""
    contract = (((1,), (0,)), ((), ()))
    return lax.dot_general(rows.astype(jnp.bfloat16), kernel, contract, preferred_element_type=jnp.float32)


def _by_rows(product, x: jax.Array) -> jax.Array:
    """``product`` ((N, I) float32 -> (N, O)) of x (..., I) as rows: (..., O). A single row runs as two: XLA's
    int8 and bfloat16 kernels have no matrix-vector form and take 10-20x longer for one row than for two (a
    predictor step or a joiner call at batch 1 multiplies one row)."""
    *lead, features = x.shape
    rows = x.reshape(-1, features).astype(jnp.float32)
    count = rows.shape[0]
    if count == 1:
        rows = jnp.pad(rows, ((0, 1), (0, 0)))
    y = product(rows)[:count]
    return y.reshape(*lead, y.shape[-1])


class QuantizedDense(nn.Module):
    """Inference form of a Dense layer with bfloat16 or int8 weights (see the module docstring); the bias
    stays float32. Its parameters come from a float32 layer's through ``streamformer.quantize`` (``init``
    gives placeholders of the right shapes): "bfloat16": ``kernel`` (in, out) bfloat16; "int8":
    ``int8_kernel`` (in, out) int8 and ``scale`` (out,) float32, one per output channel."""

    features: int
    weights: str
    use_bias: bool = True
    dtype: Dtype = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        inputs, outputs = x.shape[-1], self.features
        if self.weights == "int8":
            kernel = self.param("int8_kernel", nn.initializers.zeros, (inputs, outputs), jnp.int8)
            scale = self.param("scale", nn.initializers.ones, (outputs,), jnp.float32)
            y = _by_rows(lambda rows: int8_matmul(rows, kernel, scale), x)
        elif self.weights == "bfloat16":
            kernel = self.param("kernel", nn.initializers.zeros, (inputs, outputs), jnp.bfloat16)
            y = _by_rows(lambda rows: bfloat16_matmul(rows, kernel), x)
        else:
            raise ValueError(f"weights: expected 'bfloat16' or 'int8', got {self.weights!r}")
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (outputs,), jnp.float32)
        return y.astype(self.dtype or x.dtype)


class QuantizedEmbed(nn.Module):
    """Inference form of an embedding table with bfloat16 or int8 rows: "bfloat16": ``embedding`` (V, E)
    bfloat16; "int8": ``int8_embedding`` (V, E) int8 and ``scale`` (V,) float32, one per row (symbol).
    Lookups return float32 (or ``dtype``)."""

    num_embeddings: int
    features: int
    weights: str
    dtype: Dtype = None

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        shape, dtype = (self.num_embeddings, self.features), self.dtype or jnp.float32
        if self.weights == "int8":
            table = self.param("int8_embedding", nn.initializers.zeros, shape, jnp.int8)
            scale = self.param("scale", nn.initializers.ones, (self.num_embeddings,), jnp.float32)
            return (table[tokens].astype(jnp.float32) * scale[tokens][..., None]).astype(dtype)
        if self.weights == "bfloat16":
            return self.param("embedding", nn.initializers.zeros, shape, jnp.bfloat16)[tokens].astype(dtype)
        raise ValueError(f"weights: expected 'bfloat16' or 'int8', got {self.weights!r}")
