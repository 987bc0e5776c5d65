"""One training step of emformer_rnnt_base (the base preset's model, V = 4097; ``--preset`` picks another) with
each loss, in one process:
the trainer's jitted train_step (forward, backward, Adam update) on a batch of B=8 utterances of 1000 feature
frames (T' = 250 encoder frames) and U=80 labels.

    PYTHONPATH=. .venv/bin/python -u benchmarks/rnnt_train_step.py [--losses pruned,efficient] [--repeats 2]

Losses: "pruned" (optim.loss=pruned, prune_range 5, after warm-up), "efficient" (optim.loss=full with
loss_chunk_frames=16: rnnt_loss_from_encodings), "full" (optim.loss=full with loss_chunk_frames=0: the whole
joint at once; about 11 GiB, memory only unless --time-full). Peak memory: XLA's compiled memory analysis of the
step (parameters, Adam state and the batch included). Time: median of ``--repeats`` steps after one warm-up step.
FLOPs: XLA's cost analysis of the compiled step, against this machine's ceiling (a 4096^3 float32 matmul's
FLOP/s, measured first).

The speech preset's step (the real-speech recipe, benchmarks/speech_recipe.md):
    PYTHONPATH=. .venv/bin/python -u benchmarks/rnnt_train_step.py --preset speech --vocab 65 --batch 32 \
        --frames 260 --labels 33 --losses pruned,efficient --repeats 20
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import numpy as np
from _timing import matmul_flops_per_second, median_time
from rnnt_loss import gib
from rnnt_loss_pruned import cpu_name

from streamformer.train import config as config_lib
from streamformer.train.loop.step import build_model, init_state, make_optimizer, make_train_step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="base", help="train preset whose model and optimizer to use")
    parser.add_argument("--vocab", type=int, default=4097, help="V, blank included")
    parser.add_argument("--losses", default="pruned,efficient,full")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--labels", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="config override, as train's --set")
    parser.add_argument("--time-full", action="store_true")
    parser.add_argument(
        "--memory-only", action="store_true", help="compile and report peak memory, do not run"
    )
    args = parser.parse_args()
    B, U, V = args.batch, args.labels, args.vocab
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs, jax {jax.__version__}; "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    peak = matmul_flops_per_second()
    print(f"ceiling: a 4096^3 float32 matmul runs at {peak / 1e9:.0f} GFLOP/s")
    base = config_lib.apply_overrides(config_lib.preset(args.preset), args.set)
    rng = np.random.default_rng(0)
    right_context = base.model.right_context_length
    batch = {
        "features": rng.standard_normal((B, args.frames + right_context, base.model.input_dim)).astype(
            np.float32
        ),
        "feature_lengths": np.full((B,), args.frames, np.int32),
        "targets": rng.integers(0, V - 1, (B, U)).astype(np.int32),
        "target_lengths": np.full((B,), U, np.int32),
        "valid": np.ones((B,), bool),
    }
    stride = base.model.time_reduction_stride
    print(
        f"preset {args.preset} {' '.join(args.set)};\n"
        f"shape: B={B}, {args.frames} feature frames (T'={args.frames // stride}), U={U}, V={V}"
    )
    variants = {
        "pruned": dict(loss="pruned", prune_range=5),
        "efficient": dict(loss="full", loss_chunk_frames=16),
        "full": dict(loss="full", loss_chunk_frames=0),
    }
    for name in args.losses.split(","):
        optim = dataclasses.replace(base.optim, **variants[name])
        config = dataclasses.replace(base, optim=optim)
        model = build_model(
            config.model, V, simple_loss_projections=optim.loss == "pruned", ctc_head=optim.ctc_weight > 0
        )
        optimizer = make_optimizer(optim, 1000)
        state = init_state(model, optimizer, 0)
        if optim.loss == "pruned":  # after the warm-up (the scales do not change the cost)
            state = state.replace(step=state.step + optim.loss_warmup_steps)
        step = jax.jit(make_train_step(model, optimizer, config, blank=V - 1))
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        compile_seconds = time.perf_counter() - start
        analysis = compiled.memory_analysis()
        peak_bytes = (
            analysis.argument_size_in_bytes
            + analysis.output_size_in_bytes
            + analysis.temp_size_in_bytes
            - analysis.alias_size_in_bytes
        )
        costs = compiled.cost_analysis()
        flops = float((costs[0] if isinstance(costs, list) else costs).get("flops", 0.0))
        line = (
            f"{name}: compile {compile_seconds:.1f} s; peak memory {gib(peak_bytes)} "
            f"(temp {gib(analysis.temp_size_in_bytes)}); {flops / 1e9:.1f} GFLOP a step"
        )
        if not args.memory_only and (name != "full" or args.time_full):
            holder = {"state": state}

            def run(holder=holder, compiled=compiled):
                new_state, metrics = compiled(holder["state"], batch)
                jax.block_until_ready(metrics)
                holder["metrics"] = metrics

            seconds = median_time(run, args.repeats, warmup=True)
            line += (
                f"; step {seconds:.3f} s (median of {args.repeats}), {flops / seconds / 1e9:.1f} GFLOP/s = "
                f"{100 * flops / seconds / peak:.0f} % of the matmul ceiling; "
                f"loss {float(holder['metrics']['loss']):.2f}"
            )
        print(line, flush=True)
        del compiled, state
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
