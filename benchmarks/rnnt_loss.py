"""Time and peak memory of RNN-T loss + gradient: full joint vs. memory-efficient (from encodings).

Shapes default to the base model's training shape: B=8, T=250, U=80, V=4097, D=1024.

    .venv/bin/python benchmarks/rnnt_loss.py [--batch 8 --frames 250 --labels 80 --vocab 4097 --dim 1024]

Measured for each path: XLA's compiled memory analysis (argument + output + temp bytes) of the jitted
loss-and-gradient function, and the median wall time of ``--repeats`` runs after one warm-up run.
"One read" is a jitted ``jnp.sum`` over the same logits array: the floor any loss over the full joint must pay once.

Paths:
- full (logits given): ``jax.value_and_grad(rnnt_loss)`` on a (B, T, U + 1, V) float32 logits array.
- full (with joiner): joiner linear(relu(src + tgt)) to V, whole joint materialised, then ``rnnt_loss``;
  gradients into the joiner's weights and both encodings (the training step this loss replaces).
- memory-efficient: ``rnnt_loss_from_encodings`` with the same joiner and gradients.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time

import jax
import jax.numpy as jnp

from streamformer.rnnt_loss import rnnt_loss, rnnt_loss_from_encodings


def compiled_bytes(fn, *args) -> dict[str, int]:
    analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
    sizes = {
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
    }
    sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    return sizes


def median_seconds(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gib(n: int) -> str:
    return f"{n / 2**30:.3f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--labels", type=int, default=80)
    parser.add_argument("--vocab", type=int, default=4097)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-joiner-full", action="store_true", help="skip the full path with the joiner")
    args = parser.parse_args()
    B, T, U, V, D = args.batch, args.frames, args.labels, args.vocab, args.dim

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )
    print(f"shape: B={B} T={T} U={U} V={V} D={D} chunk_size={args.chunk_size}")

    keys = jax.random.split(jax.random.key(0), 6)
    targets = jax.random.randint(keys[0], (B, U), 0, V - 1)
    logit_lengths = jnp.full((B,), T, jnp.int32).at[1].set(T - 17)
    target_lengths = jnp.full((B,), U, jnp.int32).at[2].set(U - 9)

    # Full joint, logits given.
    logits = jax.random.normal(keys[1], (B, T, U + 1, V), jnp.float32)
    full_loss = jax.value_and_grad(lambda x: rnnt_loss(x, targets, logit_lengths, target_lengths))
    one_read = jax.jit(jnp.sum)
    full_mem = compiled_bytes(full_loss, logits)
    full_time = median_seconds(jax.jit(full_loss), logits, repeats=args.repeats)
    read_time = median_seconds(one_read, logits, repeats=args.repeats)
    print(
        f"full (logits given): peak {gib(full_mem['peak'])} {full_mem}; loss+grad {full_time:.3f} s; "
        f"one read (jnp.sum) {read_time:.3f} s; ratio {full_time / read_time:.2f}x"
    )
    del logits

    # Realistic joiner: linear(relu(src + tgt)) to V.
    scale = D**-0.5
    params = {
        "kernel": jax.random.uniform(keys[2], (D, V), jnp.float32, -scale, scale),
        "bias": jax.random.uniform(keys[3], (V,), jnp.float32, -scale, scale),
    }
    source = jax.random.normal(keys[4], (B, T, D), jnp.float32)
    target = jax.random.normal(keys[5], (B, U + 1, D), jnp.float32)

    def join(p, s, t):
        return jax.nn.relu(s[:, :, None, :] + t[:, None, :, :]) @ p["kernel"] + p["bias"]

    def full_with_joiner(p, s, t):
        return rnnt_loss(join(p, s, t), targets, logit_lengths, target_lengths)

    def efficient(p, s, t):
        return rnnt_loss_from_encodings(
            s,
            t,
            lambda sc, tc: join(p, sc, tc),
            targets,
            logit_lengths,
            target_lengths,
            chunk_size=args.chunk_size,
        )

    grads = (0, 1, 2)
    results = {}
    paths = [("memory-efficient", efficient)]
    if not args.skip_joiner_full:
        paths.insert(0, ("full (with joiner)", full_with_joiner))
    for name, fn in paths:
        step = jax.value_and_grad(fn, argnums=grads)
        mem = compiled_bytes(step, params, source, target)
        seconds = median_seconds(jax.jit(step), params, source, target, repeats=args.repeats)
        results[name] = (mem, seconds)
        print(f"{name}: peak {gib(mem['peak'])} {mem}; loss+grad {seconds:.3f} s")

    efficient_mem = results["memory-efficient"][0]["peak"]
    print(f"memory-efficient / full (logits given) peak: {efficient_mem / full_mem['peak']:.3f}")
    if "full (with joiner)" in results:
        print(
            f"memory-efficient / full (with joiner) peak: "
            f"{efficient_mem / results['full (with joiner)'][0]['peak']:.3f}; time ratio "
            f"{results['memory-efficient'][1] / results['full (with joiner)'][1]:.2f}"
        )
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
