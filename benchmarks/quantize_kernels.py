"""Which int8 (and bfloat16) matmul to build quantised inference on, measured on this CPU: the matmuls of
``emformer_rnnt_base``'s 20 Emformer layers (query, key/value, out_proj, feed-forward; 250 MB in float32) as
one jitted chain on the 5 rows of a streaming step, with each way of storing and multiplying the weights:

- float32: XLA's dot;
- bfloat16 weights: bfloat16 x bfloat16 dot accumulating in float32, or dequantised to float32 first;
- int8 weights, weight-only: dequantised to float32 inside the jit, then the float32 dot (exact weight-only
  quantisation; fast only if XLA fuses the conversion into the dot);
- int8 weights, dynamic activations: ``streamformer._nn.int8_matmul`` (each row quantised to int8, XLA's
  int8 x int8 -> int32 dot), what ``streamformer.quantize(..., "int8")`` uses, and the same with the kernel
  stored (out, in);
- qwix (``pip install qwix``): post-training quantisation of flax Dense layers, weight-only and with dynamic
  int8 activations;
- AQT (``pip install aqtp``): ``AqtDotGeneral`` with ``config_v4`` (int8 both sides), weights frozen to int8
  (serving mode).

Libraries not installed are skipped. Also printed: the read bandwidth (a sum over 256 MB) and what each chain
would take at it. Run: ``python benchmarks/quantize_kernels.py [--repeats 30]`` on an idle machine.
"""

from __future__ import annotations

import argparse
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _timing import cpu_description, median_time
from jax import lax

from streamformer._nn import int8_matmul, quantize_rows

SHAPES = [(512, 512), (512, 1024), (512, 512), (512, 2048), (2048, 512)]  # (in, out) per layer
LAYERS, ROWS = 20, 5


def chain(matmul):
    """The 20 layers' products through ``matmul(x, weight)``, with cheap elementwise glue."""

    @jax.jit
    def run(x, weights):
        for w_query, w_key_value, w_out, w_in, w_ffn_out in weights:
            attended = matmul(x, w_query) * matmul(x, w_key_value)[:, :512]
            x = x + jnp.tanh(matmul(attended, w_out))
            x = x + matmul(jnp.maximum(matmul(x, w_in), 0), w_ffn_out)
        return x

    return run


class Chain(nn.Module):
    """The same chain as flax Dense layers (no bias), for the libraries that quantise flax modules."""

    dot_general_cls: type | None = None

    @nn.compact
    def __call__(self, x):
        kw = {} if self.dot_general_cls is None else {"dot_general_cls": self.dot_general_cls}
        dense = lambda n, name: nn.Dense(n, use_bias=False, name=name, **kw)  # noqa: E731
        for i in range(LAYERS):
            attended = dense(512, f"q{i}")(x) * dense(1024, f"kv{i}")(x)[:, :512]
            x = x + jnp.tanh(dense(512, f"o{i}")(attended))
            x = x + dense(512, f"f2{i}")(jnp.maximum(dense(2048, f"f1{i}")(x), 0))
        return x


def _out_in_product(x, weight, dimensions):
    """int8_matmul with the kernel stored (out, in)."""
    kernel, scales = weight
    peak = jnp.max(jnp.abs(x), axis=1, keepdims=True)
    step = jnp.where(peak > 0, peak / 127.0, 1.0)
    quantized = jnp.round(x / step).astype(jnp.int8)
    return lax.dot_general(quantized, kernel, dimensions, preferred_element_type=jnp.int32) * step * scales


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    r = args.repeats
    print(f"CPU: {cpu_description()}; jax {jax.__version__}; load average {os.getloadavg()[0]:.2f}")
    rng = np.random.default_rng(0)
    floats = [[rng.standard_normal(s).astype(np.float32) * 0.02 for s in SHAPES] for _ in range(LAYERS)]
    x = jnp.full((ROWS, 512), 0.1, jnp.float32)
    results = []

    def timed(name, fn, weights, weight_bytes):
        seconds = median_time(lambda: fn(x, weights).block_until_ready(), r, warmup=True)
        results.append((name, seconds, weight_bytes))
        print(f"  {name}: {1e3 * seconds:.2f} ms", flush=True)

    f32 = [[jnp.asarray(w) for w in layer] for layer in floats]
    bf16 = [[jnp.asarray(w, jnp.bfloat16) for w in layer] for layer in floats]
    # int8 kernels as streamformer stores them, (in, out) with one scale per output channel; and (out, in)
    int8_out_in = [[tuple(map(jnp.asarray, quantize_rows(w.T))) for w in layer] for layer in floats]
    int8 = [[(q.T, s) for q, s in layer] for layer in int8_out_in]
    n = sum(w.size for layer in floats for w in layer)
    contract = (((1,), (0,)), ((), ()))
    timed("float32, XLA dot", chain(lambda x, w: x @ w), f32, 4 * n)
    timed(
        "bfloat16 weights, bfloat16 dot accumulating in float32",
        chain(
            lambda x, w: lax.dot_general(
                x.astype(jnp.bfloat16), w, contract, preferred_element_type=jnp.float32
            )
        ),
        bf16,
        2 * n,
    )
    timed(
        "bfloat16 weights dequantised to float32, float32 dot",
        chain(lambda x, w: x @ w.astype(jnp.float32)),
        bf16,
        2 * n,
    )
    timed(
        "int8 weight-only: dequantised to float32 in the jit, float32 dot",
        chain(lambda x, w: (x @ w[0].astype(jnp.float32)) * w[1]),
        int8,
        n,
    )
    timed(
        "int8 weights, dynamic int8 activations, XLA int8 dot (streamformer)",
        chain(lambda x, w: int8_matmul(x, *w)),
        int8,
        n,
    )
    out_in = (((1,), (1,)), ((), ()))
    timed(
        "the same with the int8 kernel stored (out, in)",
        chain(lambda x, w: _out_in_product(x, w, out_in)),
        int8_out_in,
        n,
    )

    flax_params = {"params": {}}
    for i, layer in enumerate(floats):
        for name, w in zip(("q", "kv", "o", "f1", "f2"), layer):
            flax_params["params"][f"{name}{i}"] = {"kernel": jnp.asarray(w)}
    try:
        import qwix
    except ImportError:
        print("  qwix: not installed (pip install qwix)")
    else:
        model = Chain()
        for label, rule in (
            ("qwix PTQ weight-only int8", qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8)),
            (
                "qwix PTQ int8 weights + dynamic int8 activations",
                qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8, act_qtype=jnp.int8),
            ),
        ):
            quantized = qwix.quantize_model(model, qwix.PtqProvider([rule]))
            abstract = jax.eval_shape(quantized.init, jax.random.key(0), x)
            params = {"params": qwix.quantize_params(flax_params["params"], abstract["params"])}
            timed(label, jax.jit(lambda x, p, m=quantized: m.apply(p, x)), params, n)
    try:
        from aqt.jax.v2 import config as aqt_config
        from aqt.jax.v2.flax import aqt_flax
    except ImportError:
        print("  AQT: not installed (pip install aqtp)")
    else:
        import functools

        def aqt_model(mode):
            cls = functools.partial(
                aqt_flax.AqtDotGeneral,
                cfg=aqt_config.config_v4(fwd_bits=8, dlhs_bits=None, drhs_bits=None),
                rhs_quant_mode=mode,
                rhs_freeze_mode=aqt_flax.FreezerMode.CALIBRATION_AND_VALUE,
                use_legacy_freezer=False,
            )
            return Chain(dot_general_cls=cls)

        convert = aqt_model(aqt_flax.QuantMode.CONVERT)
        _, converted = convert.apply(flax_params, x, mutable=True, rngs={"params": jax.random.key(0)})
        serving = aqt_model(aqt_flax.QuantMode.SERVE)
        params = {"params": flax_params["params"], "aqt": converted["aqt"]}
        timed(
            "AQT config_v4 int8, weights frozen (serve)",
            jax.jit(lambda x, p: serving.apply(p, x, rngs={"params": jax.random.key(0)})),
            params,
            n,
        )

    total = jax.jit(jnp.sum)
    big = jnp.ones((256 * 2**20 // 4,), jnp.float32)
    bandwidth = 256 * 2**20 / median_time(lambda: total(big).block_until_ready(), 7, warmup=True)
    print(f"\nread bandwidth (sum over 256 MB): {bandwidth / 1e9:.1f} GB/s\n")
    print("| weights and product | ms per step's matmuls | weights read | at the read bandwidth |")
    print("|---|---|---|---|")
    for name, seconds, size in results:
        print(f"| {name} | {1e3 * seconds:.2f} | {size / 1e6:.0f} MB | {1e3 * size / bandwidth:.2f} ms |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
