"""Emformer RNN-T transcriber (emformer_rnnt_base(4097), 76.7 M parameters): streamformer against torchaudio
2.8 in the same process, on the same (converted) random weights, float32.

Measures, for 10 s of input (1000 feature frames of 80 mels):

1. streaming latency at batch 1: seconds per 16 + 4 frame segment, torchaudio's transcribe_streaming loop
   against our jitted transcribe_streaming step (one compiled call per segment, result fetched every step);
2. streaming throughput: 32 streams in one batch (our jitted step over a (32, 20, 80) chunk, and
   transcribe_in_segments, the whole utterance as one lax.scan) against torchaudio's one-stream loop run once per
   stream (measured on one stream, times 32);
3. offline transcribe at batch 1.

Run: ``python benchmarks/rnnt.py [--repeats N] [--streams 32]``. torch uses 2 threads
(torch.set_num_threads(2)); XLA uses the machine's cores. Medians over ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _timing import emformer_matmul_chain, median_time, utterance_and_chunks

from streamformer.convert import from_torchaudio, reference
from streamformer.transducer import emformer_rnnt_base

FRAMES, MELS = 1000, 80


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=2,
        help="torch threads (default 2; on an oversubscribed machine torch's 2-thread runs collapse, use 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    ta = reference.load()
    torch.manual_seed(0)
    torch_model = ta.models.emformer_rnnt_base(4097).eval()
    model = emformer_rnnt_base(4097)
    variables = from_torchaudio(model, torch_model.state_dict())
    S, R = model.segment_length, model.right_context_length
    features, chunks, T = utterance_and_chunks(model, FRAMES)
    segments = len(chunks)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} "
        f"({jax.devices()[0].platform}), torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    )
    print(f"input: {FRAMES} frames padded to {T} = {segments} segments of {S} + {R} frames, {MELS} mels")

    # -- jitted functions ------------------------------------------------------------------------
    # The parameters are arguments, not closed-over constants, as in a real server.
    jit_step = jax.jit(
        lambda v, x, n, s: model.apply(v, x, n, s, method="transcribe_streaming"), donate_argnums=3
    )
    jit_stream = jax.jit(lambda v, x, n: model.apply(v, x, n, method="transcribe_in_segments"))
    jit_transcribe = jax.jit(lambda v, x, n: model.apply(v, x, n, method="transcribe"))
    step = lambda *a: jit_step(variables, *a)  # noqa: E731
    stream = lambda *a: jit_stream(variables, *a)  # noqa: E731
    transcribe = lambda *a: jit_transcribe(variables, *a)  # noqa: E731

    def ours_streaming(batch: int):
        state = model.init_transcriber_state(batch)
        lengths = jnp.full((batch,), S + R, jnp.int32)
        outputs = []
        for chunk in chunks:
            output, _, state = step(jnp.broadcast_to(chunk, (batch, S + R, MELS)), lengths, state)
            outputs.append(np.asarray(output))  # fetched every step, as a streaming client would
        return np.concatenate(outputs, axis=1)

    def theirs_streaming():
        state, outputs = None, []
        with torch.no_grad():
            for chunk in chunks:
                output, _, state = torch_model.transcribe_streaming(
                    torch.from_numpy(chunk), torch.tensor([S + R]), state
                )
                outputs.append(output.numpy())
        return np.concatenate(outputs, axis=1)

    def theirs_offline():
        with torch.no_grad():
            return torch_model.transcribe(torch.from_numpy(features), torch.tensor([T]))[0].numpy()

    def ours_offline():
        return np.asarray(transcribe(features, jnp.array([T]))[0])

    batch_features = np.broadcast_to(features, (args.streams, T + R, MELS)).copy()

    def ours_stream_scan():
        return np.asarray(stream(batch_features, jnp.full((args.streams,), T, jnp.int32))[0])

    # The floor of a batch-1 step: one jitted chain of matmuls over the 20 layers' weight shapes
    # (query, key/value, out_proj, feed-forward) on the 5 rows of a step, nothing else.
    chain, weights = emformer_matmul_chain()
    rows = jnp.ones((5, 512), jnp.float32)

    def weight_read_floor():
        for _ in range(segments):
            np.asarray(chain(rows, weights))

    batch_rows = jnp.ones((5 * args.streams, 512), jnp.float32)

    def compute_floor():
        for _ in range(segments):
            np.asarray(chain(batch_rows, weights))

    # -- warm-up and parity ----------------------------------------------------------------------
    reference_stream = theirs_streaming()
    ours_stream_1 = ours_streaming(1)
    ours_streaming(args.streams)
    offline_ref, offline_ours = theirs_offline(), ours_offline()
    scanned = ours_stream_scan()
    print(
        f"parity (max abs diff): streaming {np.abs(ours_stream_1 - reference_stream).max():.2e}, "
        f"offline {np.abs(offline_ours - offline_ref).max():.2e}, "
        f"scan vs torchaudio streaming {np.abs(scanned[0] - reference_stream[0]).max():.2e}"
    )

    # -- timings ---------------------------------------------------------------------------------
    r = args.repeats
    weight_read_floor()
    compute_floor()
    t_floor = median_time(weight_read_floor, r)
    t_compute_floor = median_time(compute_floor, r)
    t_theirs_stream = median_time(theirs_streaming, r)
    t_ours_stream = median_time(lambda: ours_streaming(1), r)
    t_ours_batch = median_time(lambda: ours_streaming(args.streams), r)
    t_ours_scan = median_time(ours_stream_scan, r)
    t_theirs_offline = median_time(theirs_offline, max(r, 5))
    t_ours_offline = median_time(ours_offline, max(r, 5))

    ms = lambda t: f"{1e3 * t / segments:.1f} ms"  # noqa: E731
    print("\n| measurement | torchaudio | streamformer | speed-up |")
    print("|---|---|---|---|")
    print(
        f"| streaming latency, batch 1, per segment | {ms(t_theirs_stream)} | {ms(t_ours_stream)} | "
        f"{t_theirs_stream / t_ours_stream:.2f}x |"
    )
    print(
        f"| streaming, 10 s, batch 1 | {t_theirs_stream:.3f} s | {t_ours_stream:.3f} s | "
        f"{t_theirs_stream / t_ours_stream:.2f}x |"
    )
    print(
        f"| bare matmul chain over the same weights, 5 rows (floor of a batch-1 step) | | {ms(t_floor)} | |"
    )
    theirs_n = args.streams * t_theirs_stream
    print(
        f"| bare matmul chain, {5 * args.streams} rows x {segments} steps "
        f"(floor for {args.streams} streams) | | "
        f"{t_compute_floor:.3f} s | (ceiling {theirs_n / t_compute_floor:.1f}x) |"
    )
    print(
        f"| {args.streams} streams x 10 s, step per segment (batch {args.streams}) | {theirs_n:.2f} s "
        f"(one-stream loop x {args.streams}) | {t_ours_batch:.3f} s | {theirs_n / t_ours_batch:.1f}x |"
    )
    print(
        f"| {args.streams} streams x 10 s, transcribe_in_segments (one lax.scan) | {theirs_n:.2f} s "
        f"(one-stream loop x {args.streams}) | {t_ours_scan:.3f} s | {theirs_n / t_ours_scan:.1f}x |"
    )
    print(
        f"| offline transcribe, 10 s, batch 1 | {t_theirs_offline:.3f} s | {t_ours_offline:.3f} s | "
        f"{t_theirs_offline / t_ours_offline:.2f}x |"
    )
    load = os.getloadavg()
    print(f"\nload average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
