"""Streaming demo: a small Emformer streams a synthetic utterance segment by segment.

    python scripts/stream_demo.py [--conv] [--frames 200]

Runs the whole utterance as one compiled ``lax.scan`` over the streaming step, then the same step one segment at
a time (as a live stream would, printing each segment's latency), and checks both against the full-utterance
forward pass.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from streamformer import ConvEmformer, Emformer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=200, help="utterance length T in frames")
    parser.add_argument("--layers", type=int, default=4, help="number of layers")
    parser.add_argument("--conv", action="store_true", help="use ConvEmformer instead of Emformer")
    args = parser.parse_args(argv)

    S, R, D = 8, 2, 64
    common = dict(
        input_dim=D,
        num_heads=4,
        ffn_dim=256,
        num_layers=args.layers,
        segment_length=S,
        left_context_length=16,
        right_context_length=R,
        max_memory_size=4,
    )
    model = ConvEmformer(**common, kernel_size=5) if args.conv else Emformer(**common)
    T = args.frames
    # A live stream has no frames after its end: its last look-ahead is zeros, as the chunk feeder sends it.
    x = jnp.pad(jax.random.normal(jax.random.key(1), (1, T, D)), ((0, 0), (0, R), (0, 0)))
    lengths = jnp.array([T])
    variables = model.init(jax.random.key(0), x, lengths)
    print(f"{type(model).__name__}: {T} frames, segments of {S} + {R} right-context frames")

    forward = jax.jit(lambda v, x, n: model.apply(v, x, n)[0])
    stream = jax.jit(lambda v, x, n: model.apply(v, x, n, method="stream")[0])
    infer = jax.jit(lambda v, c, n, s: model.apply(v, c, n, s, method="infer"))
    full = forward(variables, x, lengths)
    streamed = stream(variables, x, lengths)
    start = time.perf_counter()
    jax.block_until_ready(stream(variables, x, lengths))
    print(f"whole utterance as one lax.scan: {(time.perf_counter() - start) * 1e3:.1f} ms")

    # One segment at a time, as frames arrive (5 at a time here): the feeder sends a segment once its
    # look-ahead exists, and the last (maybe partial) one when the stream ends; padding there is ignored.
    state, outputs, latencies = model.init_state(1), [], []
    jax.block_until_ready(infer(variables, jnp.zeros((1, S + R, D)), jnp.array([S + R]), state))  # compile
    feeder, frames = model.layout.feeder(1, D), np.asarray(x[:, :T])

    def arriving_chunks():
        for first in range(0, T, 5):
            yield from feeder.feed(frames[:, first : first + 5])
        yield from feeder.finish()

    for i, (chunk, chunk_length) in enumerate(arriving_chunks()):
        valid = int(chunk_length[0]) - R
        start = time.perf_counter()
        out, _, state = infer(variables, chunk, jnp.asarray(chunk_length), state)
        jax.block_until_ready(out)
        latencies.append(time.perf_counter() - start)
        outputs.append(out[:, :valid])
        print(f"  segment {i:3d}: frames [{i * S:4d}, {i * S + valid:4d})  {latencies[-1] * 1e3:6.2f} ms")
    live = jnp.concatenate(outputs, axis=1)
    print(f"median latency per segment: {np.median(latencies) * 1e3:.2f} ms")
    scan_diff = float(jnp.max(jnp.abs(streamed - full)))
    live_diff = float(jnp.max(jnp.abs(live - full)))
    print(f"max |stream - forward| = {scan_diff:.2e}, max |segment by segment - forward| = {live_diff:.2e}")
    ok = scan_diff < 1e-4 and live_diff < 1e-4
    print(
        "streamed output equals the full-utterance output" if ok else "MISMATCH between streaming and forward"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
