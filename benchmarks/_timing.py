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
