"""Time and peak memory of loss + gradient: pruned RNN-T (simple + pruned) vs. the memory-efficient and the
full-joint paths, in one process.

Shapes default to the base model's training shape: B=8, T=250, U=80, V=4097, D=1024, prune_range 5.

    PYTHONPATH=. .venv/bin/python -u benchmarks/rnnt_loss_pruned.py [--time-full-joiner]

Every path computes the loss and the gradients of everything that trains: the joiner's weights and both
encodings; the pruned path also trains its two simple-loss projections (D -> V each, as icefall's
simple_am_proj and simple_lm_proj) and its loss is simple_loss_scale * simple + pruned (0.5 and 1, icefall's
values after warm-up).

Peak memory: XLA's compiled memory analysis (argument + output + temp bytes, minus aliased bytes), as in
benchmarks/rnnt_loss.py. Time: median of ``--repeats`` runs after one warm-up run (the pruned path) and of
``--joiner-repeats`` runs without warm-up (the paths that run the joiner on the whole lattice).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess

import jax
import jax.numpy as jnp
from _timing import median_time
from rnnt_loss import compile_with_memory, gib

from streamformer.losses import pruned_rnnt_loss, rnnt_loss, rnnt_loss_from_encodings


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--labels", type=int, default=80)
    parser.add_argument("--vocab", type=int, default=4097)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--prune-range", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--joiner-repeats", type=int, default=1)
    parser.add_argument("--time-full-joiner", action="store_true", help="also time the full path with joiner")
    parser.add_argument("--skip-efficient-time", action="store_true", help="memory only for memory-efficient")
    args = parser.parse_args()
    B, T, U, V, D, K = args.batch, args.frames, args.labels, args.vocab, args.dim, args.prune_range

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"shape: B={B} T={T} U={U} V={V} D={D} prune_range={K} chunk_size={args.chunk_size}")

    keys = jax.random.split(jax.random.key(0), 10)
    targets = jax.random.randint(keys[0], (B, U), 0, V - 1)
    source_lengths = jnp.full((B,), T, jnp.int32).at[1].set(T - 17)
    target_lengths = jnp.full((B,), U, jnp.int32).at[2].set(U - 9)
    scale = D**-0.5

    def dense(key):
        k1, k2 = jax.random.split(key)
        return {
            "kernel": jax.random.uniform(k1, (D, V), jnp.float32, -scale, scale),
            "bias": jax.random.uniform(k2, (V,), jnp.float32, -scale, scale),
        }

    params = {"joiner": dense(keys[1]), "am_proj": dense(keys[2]), "lm_proj": dense(keys[3])}
    source = jax.random.normal(keys[4], (B, T, D), jnp.float32)
    target = jax.random.normal(keys[5], (B, U + 1, D), jnp.float32)

    def linear(p, x):
        return x @ p["kernel"] + p["bias"]

    def full_join(p, s, t):
        return linear(p, jax.nn.relu(s[:, :, None, :] + t[:, None, :, :]))

    def pruned_join(p, s, t):
        return linear(p, jax.nn.relu(s[:, :, None, :] + t))

    def pruned(p, s, t):
        simple, pruned_loss = pruned_rnnt_loss(
            s,
            t,
            lambda a, b: pruned_join(p["joiner"], a, b),
            linear(p["am_proj"], s),
            linear(p["lm_proj"], t),
            targets,
            source_lengths,
            target_lengths,
            prune_range=K,
        )
        return 0.5 * simple + pruned_loss

    def efficient(p, s, t):
        return rnnt_loss_from_encodings(
            s,
            t,
            lambda a, b: full_join(p["joiner"], a, b),
            targets,
            source_lengths,
            target_lengths,
            chunk_size=args.chunk_size,
        )

    def full(p, s, t):
        return rnnt_loss(full_join(p["joiner"], s, t), targets, source_lengths, target_lengths)

    results = {}
    for name, fn, timed, repeats in (
        ("pruned (simple + pruned, projections and joiner)", pruned, True, args.repeats),
        (
            "memory-efficient (rnnt_loss_from_encodings)",
            efficient,
            not args.skip_efficient_time,
            args.joiner_repeats,
        ),
        ("full joint (joiner materialised, rnnt_loss)", full, args.time_full_joiner, args.joiner_repeats),
    ):
        step = jax.value_and_grad(fn, argnums=(0, 1, 2))
        compiled, mem = compile_with_memory(step, params, source, target)
        line = f"{name}: peak {gib(mem['peak'])} {mem}"
        seconds = None
        if timed:

            def run(compiled=compiled):
                jax.block_until_ready(compiled(params, source, target))

            seconds = median_time(run, repeats, warmup=repeats > 1)
            line += f"; loss+grad {seconds:.3f} s (median of {repeats})"
            value = float(compiled(params, source, target)[0])
            line += f"; loss {value:.3f}"
        results[name] = (mem["peak"], seconds)
        print(line, flush=True)
        del compiled

    (pruned_peak, pruned_time), (efficient_peak, efficient_time), (full_peak, full_time) = results.values()
    if efficient_time:
        print(f"memory-efficient / pruned time: {efficient_time / pruned_time:.1f}x")
    if full_time:
        print(f"full / pruned time: {full_time / pruned_time:.1f}x")
    print(f"pruned / memory-efficient peak: {pruned_peak / efficient_peak:.3f}")
    print(f"pruned / full peak: {pruned_peak / full_peak:.3f}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
