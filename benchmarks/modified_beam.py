"""Modified beam search (icefall's; streamformer.decoding.modified_beam_search) on emformer_rnnt_base(4097)
against torchaudio 2.8's RNNTBeamSearch, same process, same converted random weights, float32, 10 s inputs.

1. batch 32: our modified beam search (beam 4) of 32 utterances in one batch against torchaudio's
   RNNTBeamSearch (beam 4) looped over the 32 utterances (timed on ``--torch-utterances`` of them, times
   32 / that number: one utterance takes torchaudio about a minute here);
2. batch 1: the same, one utterance;
3. streaming: 32 streams through StreamingDecoder(search=ModifiedBeamSearch(4)), 63 steps of 16 + 4 frames.

Run: ``python benchmarks/modified_beam.py [--repeats 3] [--torch-utterances 1] [--no-torch]``.
torch uses 2 threads. Ours: median of ``--repeats`` runs after a warm-up (compilation excluded).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import jax
import numpy as np
from _timing import median_time

from streamformer.decoding import ModifiedBeamSearch, StreamingDecoder, modified_beam_search
from streamformer.transducer import emformer_rnnt_base

FRAMES, MELS, V, BEAM, BATCH = 1000, 80, 4097, 4, 32


def _load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-utterances", type=int, default=1)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    args = parser.parse_args()
    model = emformer_rnnt_base(V)
    if not args.no_torch:
        import torch

        from streamformer.convert import from_torchaudio, reference

        torch.set_num_threads(2)
        ta = reference.load()
        torch.manual_seed(0)
        torch_model = ta.models.emformer_rnnt_base(V).eval()
        variables = from_torchaudio(model, torch_model.state_dict())
        searcher = ta.models.RNNTBeamSearch(torch_model, blank=V - 1)
    else:
        variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if "Model name" in line), "?")
    print(
        f"machine: {cpu} ({platform.machine()}), {os.cpu_count()} cores; jax {jax.__version__}; load {_load()}"
    )
    R = model.right_context_length
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, FRAMES + R, MELS)).astype(np.float32)
    lengths = np.full((BATCH,), FRAMES, np.int32)

    results = {}
    for batch in (1, BATCH):

        def ours(batch=batch):
            return modified_beam_search(model, variables, x[:batch], lengths[:batch], beam_width=BEAM)

        started = time.perf_counter()
        ours()
        compile_seconds = time.perf_counter() - started
        seconds = median_time(ours, args.repeats)
        results[batch] = seconds
        print(
            f"ours modified beam {BEAM}, batch {batch}: {seconds:.2f} s ({seconds / batch:.3f} s per utterance; "
            f"first call {compile_seconds:.1f} s); load {_load()}",
            flush=True,
        )
    if not args.no_torch:
        times = []
        for b in range(args.torch_utterances):
            started = time.perf_counter()
            with torch.no_grad():
                searcher(torch.from_numpy(x[b]), torch.tensor(FRAMES), BEAM)
            times.append(time.perf_counter() - started)
        per_utterance = float(np.mean(times))
        print(
            f"torchaudio RNNTBeamSearch beam {BEAM}, one utterance: {per_utterance:.1f} s (mean of "
            f"{args.torch_utterances}); load {_load()}",
            flush=True,
        )
        print(
            f"batch 1: {per_utterance / results[1]:.1f}x; batch 32 vs the loop over 32 utterances "
            f"({per_utterance * BATCH:.0f} s): {per_utterance * BATCH / results[BATCH]:.1f}x"
        )
    if not args.skip_streaming:
        decoder = StreamingDecoder(model, variables, search=ModifiedBeamSearch(BEAM))
        chunks = list(model.layout.iter_chunks(x[:, :FRAMES], lengths))

        def stream():
            state = decoder.init(BATCH)
            for chunk, chunk_lengths in chunks:
                state = decoder.step(state, chunk, chunk_lengths)
            return decoder.result(state)

        stream()
        seconds = median_time(stream, max(1, args.repeats - 1))
        print(
            f"ours streaming modified beam {BEAM}, {BATCH} streams: {seconds:.2f} s for {len(chunks)} steps "
            f"({1000 * seconds / len(chunks):.0f} ms per step, {seconds / BATCH:.2f} s per stream); "
            f"load {_load()}"
        )


if __name__ == "__main__":
    main()
