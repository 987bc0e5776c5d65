"""Emformer / ConvEmformer against torchaudio 2.8: same process, same (converted) weights, same thread count.

1. O(T) forward: time and XLA peak memory per frame at T = 1x, 4x, 16x a base length (torchaudio builds a
   (T + R·N + N)^2 attention mask; we attend within fixed windows).
2. Offline forward time, streaming step latency (batch 1) and whole-utterance streaming, against torchaudio.

    python benchmarks/encoders.py --model emformer        # the encoder of emformer_rnnt_base
    python benchmarks/encoders.py --model conv_emformer
    python benchmarks/encoders.py --model emformer --quick  # a small model, seconds

Prints a markdown table (paste it into BENCHMARKS.md with the command and the machine).
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _timing import median_time

from streamformer import ConvEmformer, Emformer, convert
from streamformer.convert import reference

THREADS = int(os.environ.get("BENCH_THREADS", "2"))


def block(x):
    return jax.block_until_ready(x)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["emformer", "conv_emformer"], default="emformer")
    parser.add_argument("--quick", action="store_true", help="a small model and short inputs")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    ta = reference.load()

    if args.quick:
        config = dict(
            input_dim=64,
            num_heads=4,
            ffn_dim=128,
            num_layers=2,
            segment_length=4,
            left_context_length=8,
            right_context_length=1,
        )
        base = 64
    else:  # the transformer of torchaudio's emformer_rnnt_base (after its 4x time reduction: 10 s = 250 frames)
        config = dict(
            input_dim=512,
            num_heads=8,
            ffn_dim=2048,
            num_layers=20,
            segment_length=4,
            left_context_length=30,
            right_context_length=1,
            max_memory_size=0,
            weight_init_scale_strategy="depthwise",
            tanh_on_mem=True,
        )
        base = 250
    torch.manual_seed(0)
    if args.model == "emformer":
        torch_model, model = ta.models.Emformer(**config), Emformer(**config)
    else:
        conv = dict(config, kernel_size=8)
        torch_model, model = ta.prototype.models.ConvEmformer(**conv), ConvEmformer(**conv)
    torch_model.eval()
    variables = convert.from_torchaudio(model, torch_model.state_dict())
    S, R, D = config["segment_length"], config["right_context_length"], config["input_dim"]
    rng = np.random.default_rng(0)
    print(f"# {args.model}: {config}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} on {jax.devices()[0].platform};"
        f" torch {torch.__version__} with {THREADS} threads\n"
    )

    forward = jax.jit(lambda v, x, n: model.apply(v, x, n)[0])
    print("## O(T) forward, batch 1\n")
    print(
        "| T (frames) | streamformer ms | ms/frame | XLA peak MB | MB/frame | torchaudio ms | ms/frame | speed-up |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for multiple in (1, 4, 16):
        T = base * multiple
        x = rng.standard_normal((1, T + R, D)).astype(np.float32)
        lengths = np.array([T])
        xj, lj = jnp.asarray(x), jnp.asarray(lengths)
        compiled = forward.lower(variables, xj, lj).compile()
        memory = compiled.memory_analysis()
        peak = (
            memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
        ) / 2**20
        ours = median_time(lambda: block(compiled(variables, xj, lj)), args.repeats, warmup=True)
        with torch.no_grad():
            xt, lt = torch.from_numpy(x), torch.from_numpy(lengths)
            theirs = median_time(
                lambda: torch_model(xt, lt), max(1, args.repeats if multiple < 16 else 1), warmup=True
            )
        print(
            f"| {T} | {ours * 1e3:.1f} | {ours * 1e3 / T:.3f} | {peak:.0f} | {peak / T:.2f} | {theirs * 1e3:.1f} |"
            f" {theirs * 1e3 / T:.3f} | {theirs / ours:.2f}x |"
        )

    print("\n## Streaming, batch 1\n")
    T = base
    x = rng.standard_normal((1, T + R, D)).astype(np.float32)
    infer = jax.jit(lambda v, c, n, s: model.apply(v, c, n, s, method="infer"))
    chunks = [jnp.asarray(x[:, i * S : i * S + S + R]) for i in range(T // S)]
    full = jnp.array([S + R])

    def ours_loop():
        state = None
        for chunk in chunks:
            out, _, state = infer(variables, chunk, full, state)
        block(out)

    torch_chunks = [torch.from_numpy(np.array(chunk)) for chunk in chunks]

    def torch_loop():
        states = None
        with torch.no_grad():
            for chunk in torch_chunks:
                _, _, states = torch_model.infer(chunk, torch.tensor([S + R]), states)

    stream = jax.jit(lambda v, x, n: model.apply(v, x, n, method="stream")[0])
    xj, lj = jnp.asarray(x), jnp.array([T])
    ours_step = median_time(ours_loop, args.repeats, warmup=True) / len(chunks)
    torch_step = median_time(torch_loop, args.repeats, warmup=True) / len(chunks)
    ours_stream = median_time(lambda: block(stream(variables, xj, lj)), args.repeats, warmup=True)
    print("| measure | streamformer | torchaudio | speed-up |")
    print("|---|---|---|---|")
    print(
        f"| one infer step (segment of {S} frames) | {ours_step * 1e3:.2f} ms | {torch_step * 1e3:.2f} ms |"
        f" {torch_step / ours_step:.2f}x |"
    )
    print(
        f"| whole utterance ({T} frames) streamed | {ours_stream * 1e3:.1f} ms (one lax.scan) |"
        f" {torch_step * len(chunks) * 1e3:.1f} ms (infer loop) | {torch_step * len(chunks) / ours_stream:.2f}x |"
    )
    batch = 32
    xb = jnp.asarray(rng.standard_normal((batch, T + R, D)).astype(np.float32))
    ours_batch = median_time(
        lambda: block(stream(variables, xb, jnp.full((batch,), T))), max(1, args.repeats - 1), warmup=True
    )
    print(
        f"| {batch} streams in one batch, streamed | {ours_batch * 1e3:.1f} ms |"
        f" {torch_step * len(chunks) * batch * 1e3:.1f}"
        f" ms ({batch} x one-stream loop) | {torch_step * len(chunks) * batch / ours_batch:.2f}x |"
    )


if __name__ == "__main__":
    main()
