"""FLOPs of one training step of the ``base`` preset (torchaudio's emformer_rnnt_base, pruned loss), from XLA's
cost analysis of the lowered step (nothing is compiled or run), and what an epoch of LibriSpeech 960 h costs
on an accelerator at a given peak.

    python benchmarks/base_step_flops.py                     # batch 64, 12.8 s buckets, 48 target tokens
    python benchmarks/base_step_flops.py --frames 1600 --tokens 64

LibriSpeech 960 h: 281,241 training utterances, 12.3 s on average; BENCHMARKS.md ("Data at scale") has the
figures and the epoch cost.
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

from streamformer.train.config import preset
from streamformer.train.loop.step import build_model, init_state, make_optimizer, make_train_step

LIBRISPEECH_960H_UTTERANCES = 281_241


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=64, help="global batch (the base preset's)")
    parser.add_argument("--frames", type=int, default=1280, help="feature frames of the bucket (10 ms each)")
    parser.add_argument("--tokens", type=int, default=48, help="target tokens of the bucket")
    parser.add_argument("--peak-tflops", type=float, nargs="*", default=[197.0, 459.0, 989.0],
                        help="accelerator peaks (TFLOP/s): TPU v5e, TPU v5p, H100 SXM (bf16 dense)")  # fmt: skip
    args = parser.parse_args()
    config = preset("base")
    model = build_model(config.model, 4097, simple_loss_projections=True)
    optimizer = make_optimizer(config.optim, config.loop.steps)
    step = make_train_step(model, optimizer, config, blank=4096)
    state = jax.eval_shape(lambda: init_state(model, optimizer, 0))
    right = model.right_context_length
    batch = {
        "features": jax.ShapeDtypeStruct((args.batch, args.frames + right, 80), jnp.float32),
        "feature_lengths": jax.ShapeDtypeStruct((args.batch,), jnp.int32),
        "targets": jax.ShapeDtypeStruct((args.batch, args.tokens), jnp.int32),
        "target_lengths": jax.ShapeDtypeStruct((args.batch,), jnp.int32),
        "valid": jax.ShapeDtypeStruct((args.batch,), jnp.bool_),
    }
    cost = jax.jit(step).lower(state, batch).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost["flops"])
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
    steps = LIBRISPEECH_960H_UTTERANCES / args.batch
    print(json.dumps({
        "batch": args.batch, "frames": args.frames, "tokens": args.tokens, "parameters": params,
        "step_tflop": round(flops / 1e12, 3), "steps_per_epoch": round(steps),
        "epoch_pflop": round(flops * steps / 1e15, 1),
        "epoch_minutes_at_peak": {str(p): round(flops * steps / (p * 1e12) / 60, 1) for p in args.peak_tflops},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
