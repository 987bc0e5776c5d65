"""Building blocks initialised as PyTorch initialises them, so training from scratch starts as in torchaudio.

PyTorch's defaults: Linear and Conv1d weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), LayerNorm ones and
zeros with eps 1e-5, Embedding N(0, 1). Flax's defaults differ (lecun normal, zero bias, eps 1e-6), hence these.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

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
    name: str | None = None,
) -> nn.Dense:
    """A Dense layer initialised like torch.nn.Linear (or with xavier_uniform(gain) on the weight)."""
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
