"""Time and peak memory of RNN-T loss + gradient: full joint vs. memory-efficient (from encodings).

Shapes default to the base model's training shape: B=8, T=250, U=80, V=4097, D=1024.

    .venv/bin/python benchmarks/rnnt_loss.py [--batch 8 --frames 250 --labels 80 --vocab 4097 --dim 1024]

Peak memory: XLA's compiled memory analysis of the jitted loss-and-gradient function, argument + output +
temp bytes (minus bytes aliased between a donated argument and an output). Time: the median of
``--repeats`` runs of the compiled function after one warm-up run (``--joiner-repeats`` runs, no warm-up,
for the paths that run the 4097-way joiner, which take minutes on 2 cores).

Paths:
- full (logits given): ``jax.value_and_grad(rnnt_loss)`` on a (B, T, U + 1, V) float32 logits array; once
  with a fresh gradient buffer, once with the logits donated so that the gradient is written in place
  (torchaudio's kernel does the same: ``reuse_logits_for_grads``; inside a jitted training step the
  logits are an intermediate and XLA reuses their buffer the same way).
- one read: a jitted ``jnp.sum`` over the same logits (the floor of any pass over the joint); one write:
  a jitted ``2 * logits`` into a fresh buffer; one exp pass: a jitted ``jnp.exp`` written in place.
- full (with joiner): joiner linear(relu(src + tgt)) to V, the whole joint materialised, then
  ``rnnt_loss``; gradients into the joiner's weights and both encodings. Memory only unless
  ``--time-full-joiner``.
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

from streamformer.losses import rnnt_loss, rnnt_loss_from_encodings


def compile_with_memory(fn, *args, donate: bool = False):
    compiled = jax.jit(fn, donate_argnums=(0,) if donate else ()).lower(*args).compile()
    analysis = compiled.memory_analysis()
    sizes = {
        "argument": analysis.argument_size_in_bytes,
        "output": analysis.output_size_in_bytes,
        "temp": analysis.temp_size_in_bytes,
        "alias": analysis.alias_size_in_bytes,
    }
    sizes["peak"] = sizes["argument"] + sizes["output"] + sizes["temp"] - sizes["alias"]
    return compiled, sizes


def median_seconds(compiled, make_args, *, repeats: int, warm_up: bool = True) -> float:
    """Median wall time of ``compiled(*make_args())``; arguments are made outside the timed region."""
    if warm_up:
        jax.block_until_ready(compiled(*make_args()))
    times = []
    for _ in range(repeats):
        args = jax.block_until_ready(make_args())
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
        del args
    return statistics.median(times)


def bench_full_joint(args, key, targets, logit_lengths, target_lengths) -> dict[str, int]:
    """Full joint, logits given: loss + gradient with a fresh and with an in-place gradient buffer."""
    B, T, U, V = args.batch, args.frames, args.labels, args.vocab
    logits = jax.random.normal(key, (B, T, U + 1, V), jnp.float32)
    loss_and_grad = jax.value_and_grad(lambda x: rnnt_loss(x, targets, logit_lengths, target_lengths))
    read, _ = compile_with_memory(jnp.sum, logits)
    read_time = median_seconds(read, lambda: (logits,), repeats=args.repeats)
    write, _ = compile_with_memory(lambda x: 2 * x, logits)
    write_time = median_seconds(write, lambda: (logits,), repeats=args.repeats)
    exp, _ = compile_with_memory(jnp.exp, logits, donate=True)
    exp_time = median_seconds(exp, lambda: (logits + 0.0,), repeats=args.repeats)
    print(
        f"one read (jnp.sum) {read_time:.3f} s; one write (2 * logits, fresh buffer) {write_time:.3f} s; "
        f"one exp pass in place (jnp.exp, donated) {exp_time:.3f} s = {exp_time / read_time:.2f}x one read"
    )
    full_mem = None
    for donate in (False, True):
        compiled, mem = compile_with_memory(loss_and_grad, logits, donate=donate)
        make = (lambda: (logits + 0.0,)) if donate else (lambda: (logits,))
        seconds = median_seconds(compiled, make, repeats=args.repeats)
        full_mem = full_mem or mem
        label = "in place (logits donated)" if donate else "fresh gradient buffer"
        print(
            f"full (logits given), {label}: peak {gib(mem['peak'])} {mem}; loss+grad {seconds:.3f} s "
            f"= {seconds / read_time:.2f}x one read"
        )
        del compiled
    return full_mem


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
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--joiner-repeats", type=int, default=1)
    parser.add_argument("--time-full-joiner", action="store_true", help="also time the full path with joiner")
    args = parser.parse_args()
    B, T, U, V, D = args.batch, args.frames, args.labels, args.vocab, args.dim

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} on "
        f"{jax.devices()[0].platform}; load average {os.getloadavg()[0]:.1f}"
    )
    print(f"shape: B={B} T={T} U={U} V={V} D={D} chunk_size={args.chunk_size}")

    keys = jax.random.split(jax.random.key(0), 6)
    targets = jax.random.randint(keys[0], (B, U), 0, V - 1)
    logit_lengths = jnp.full((B,), T, jnp.int32).at[1].set(T - 17)
    target_lengths = jnp.full((B,), U, jnp.int32).at[2].set(U - 9)

    full_mem = bench_full_joint(args, keys[1], targets, logit_lengths, target_lengths)

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

    results = {}
    for name, fn, timed in (
        ("full (with joiner)", full_with_joiner, args.time_full_joiner),
        ("memory-efficient", efficient, True),
    ):
        step = jax.value_and_grad(fn, argnums=(0, 1, 2))
        compiled, mem = compile_with_memory(step, params, source, target)
        line = f"{name}: peak {gib(mem['peak'])} {mem}"
        seconds = None
        if timed:
            seconds = median_seconds(
                compiled, lambda: (params, source, target), repeats=args.joiner_repeats, warm_up=False
            )
            line += f"; loss+grad {seconds:.2f} s"
        results[name] = (mem, seconds)
        print(line)
        del compiled

    efficient_peak = results["memory-efficient"][0]["peak"]
    print(f"memory-efficient / full (logits given) peak: {efficient_peak / full_mem['peak']:.3f}")
    print(
        f"memory-efficient / full (with joiner) peak: "
        f"{efficient_peak / results['full (with joiner)'][0]['peak']:.3f}"
    )
    print(f"process max RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
