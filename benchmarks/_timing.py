"""Timing shared by the benchmark scripts (imported as a sibling module: `python benchmarks/X.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], repeats: int, *, warmup: bool = False) -> float:
    """Median wall-clock seconds of ``repeats`` calls of ``fn`` (after one untimed call when ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops_per_second(size: int = 4096, repeats: int = 5) -> float:
    """This machine's float32 compute ceiling as JAX reaches it: FLOP/s of one large jitted matmul."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    product = jax.jit(jnp.matmul)
    seconds = median_time(lambda: product(a, b).block_until_ready(), repeats, warmup=True)
    return 2 * size**3 / seconds


def cpu_description() -> str:
    """The CPU's model name and its vector extensions that matter here (from /proc/cpuinfo), e.g.
    "Intel(R) Xeon(R) Processor (AVX-512, AVX512-VNNI, AMX)"."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        import platform

        return platform.processor() or platform.machine()
    extensions = [
        label
        for flag, label in (
            ("avx2", "AVX2"),
            ("avx512f", "AVX-512"),
            ("avx512_vnni", "AVX512-VNNI"),
            ("avx512_bf16", "AVX512-BF16"),
            ("amx_int8", "AMX"),
        )
        if flag in flags
    ]
    return f"{name} ({', '.join(extensions)})" if extensions else name


def emformer_matmul_chain(layers: int = 20, seed: int = 0):
    """The matmuls of emformer_rnnt_base's transformer alone, as one jitted chain: per layer the query,
    key/value, out_proj and feed-forward products (512 wide, FFN 2048) with float32 weights, nothing else.
    Returns ``(chain, weights)``; ``chain(rows (M, 512), weights)`` -> (M, 512). On the 5 rows of a streaming
    step it times what XLA's kernels take to read the 250 MB of weights."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = [(512, 512), (512, 1024), (512, 512), (512, 2048), (2048, 512)]
    weights = [
        [jnp.asarray(rng.standard_normal(s), jnp.float32) * 0.02 for s in shapes] for _ in range(layers)
    ]

    @jax.jit
    def chain(x, weights):
        for w_query, w_key_value, w_out, w_in, w_ffn_out in weights:
            attended = (x @ w_query) * (x @ w_key_value)[:, :512]
            x = x + jnp.tanh(attended @ w_out)
            x = x + jnp.maximum(x @ w_in, 0) @ w_ffn_out
        return x

    return chain, weights


def utterance_and_chunks(model, frames: int = 1000, seed: int = 0):
    """``frames`` of random features (10 s at 80 mels) padded to whole segments of ``model`` (an RNNT), with
    their right context, and the same cut into streaming chunks. Returns (features (1, T + R, F), chunks
    (N of (1, S + R, F)), T)."""
    import numpy as np

    S, R, F = model.segment_length, model.right_context_length, model.config.input_dim
    segments = -(-frames // S)
    T = segments * S
    features = np.random.default_rng(seed).standard_normal((1, T + R, F)).astype(np.float32)
    return features, [features[:, i * S : i * S + S + R] for i in range(segments)], T
