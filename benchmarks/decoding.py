"""RNN-T decoding on emformer_rnnt_base(4097) (76.7 M parameters): streamformer's jitted, batched beam search
against torchaudio 2.8's RNNTBeamSearch in the same process, on the same (converted) random weights, float32.

Measures, for 10 s of input (1000 feature frames of 80 mels, plus 4 right-context frames):

1. time per utterance at batch 1, beam 4 and 10: torchaudio's ``RNNTBeamSearch.forward`` (transcribe, then
   its Python search) against ``streamformer.decoding.beam_search`` (transcribe and search, compiled);
2. throughput: ``--batch`` different utterances decoded as one batch, against torchaudio's batch-1 time times
   the batch size (torchaudio's search takes one utterance at a time);
3. greedy search (ours only; torchaudio has none) and the streaming decoder (ours, 63 steps of 16 + 4
   frames, result read after every step) against torchaudio's ``infer`` loop;
4. parity: our best hypothesis against torchaudio's on the batch-1 utterance.

Run: ``python benchmarks/decoding.py [--repeats N] [--torch-repeats N] [--batch 32] [--beams 4 10]
[--no-torch]``. torch uses 2 threads (torch.set_num_threads(2)); XLA uses the machine's cores. Ours: medians
over ``--repeats`` runs after a warm-up (compilation excluded); torchaudio (no compilation): median of its
first run and ``--torch-repeats`` more. ``--no-torch`` times ours alone (e.g. on a GPU machine), with weights
from ``model.init``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
from _timing import median_time

from streamformer.decoding import BeamSearch, StreamingDecoder, beam_search, greedy_search
from streamformer.transducer import emformer_rnnt_base

FRAMES, MELS, V = 1000, 80, 4097


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--beams", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--torch-repeats", type=int, default=1, help="torchaudio runs after the first")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--skip-streaming", action="store_true")
    args = parser.parse_args()
    use_torch = not args.no_torch
    model = emformer_rnnt_base(V)
    if use_torch:
        import torch

        from streamformer.convert import from_torchaudio, reference

        torch.set_num_threads(2)
        ta = reference.load()
        torch.manual_seed(0)
        torch_model = ta.models.emformer_rnnt_base(V).eval()
        variables = from_torchaudio(model, torch_model.state_dict())
        searcher = ta.models.RNNTBeamSearch(torch_model, blank=V - 1)
        versions = f"torch {torch.__version__}, torch threads {torch.get_num_threads()}"
    else:
        variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
        versions = "torch not used"
    S, R = model.segment_length, model.right_context_length
    rng = np.random.default_rng(0)
    batch_features = rng.standard_normal((args.batch, FRAMES + R, MELS)).astype(np.float32)
    features, lengths = batch_features[:1], np.full((args.batch,), FRAMES, np.int32)
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} "
        f"({jax.devices()[0].device_kind}), {versions}"
    )
    print(
        f"input: {FRAMES} frames + {R} right context, {MELS} mels; batch {args.batch}; "
        f"median of {args.repeats}"
    )
    r = args.repeats
    rows = []

    def theirs(beam):
        with torch.no_grad():
            return searcher(torch.from_numpy(features[0]), torch.tensor(FRAMES), beam)

    for beam in args.beams:

        def ours_1(beam=beam):
            return beam_search(model, variables, features, lengths[:1], beam_width=beam)

        def ours_n(beam=beam):
            return beam_search(model, variables, batch_features, lengths, beam_width=beam)

        start = time.perf_counter()
        best = ours_1()[0][0]
        compile_1 = time.perf_counter() - start
        start = time.perf_counter()
        ours_n()
        compile_n = time.perf_counter() - start
        t1 = median_time(ours_1, r)
        tn = median_time(ours_n, r)
        line = {"beam": beam, "ours_1": t1, "ours_n": tn, "compile_1": compile_1, "compile_n": compile_n}
        if use_torch:
            start = time.perf_counter()
            hypos = theirs(beam)
            first = time.perf_counter() - start
            same = list(hypos[0][0][1:]) == best.tokens
            diff = abs(float(hypos[0][3]) - best.score)
            print(
                f"beam {beam}: top hypothesis {'equal' if same else 'DIFFERENT'} to torchaudio's "
                f"({len(best.tokens)} tokens, score difference {diff:.2e})"
            )
            extra = [median_time(lambda beam=beam: theirs(beam), 1) for _ in range(args.torch_repeats)]
            line["theirs"] = statistics.median([first, *extra])
        rows.append(line)
        print(line, flush=True)

    start = time.perf_counter()
    greedy_search(model, variables, features, lengths[:1])
    greedy_search(model, variables, batch_features, lengths)
    greedy_compile = time.perf_counter() - start
    g1 = median_time(lambda: greedy_search(model, variables, features, lengths[:1]), r)
    gn = median_time(lambda: greedy_search(model, variables, batch_features, lengths), r)
    print({"greedy_1": g1, "greedy_n": gn}, flush=True)

    stream_rows = []
    if not args.skip_streaming:
        segments = FRAMES // S
        chunks = [batch_features[:, i * S : i * S + S + R] for i in range(segments)]
        for beam in args.beams[:1]:
            decoder = StreamingDecoder(model, variables, search=BeamSearch(beam))

            def ours_stream(batch, decoder=decoder):
                state = decoder.init(batch)
                step_lengths = np.full((batch,), S + R, np.int32)
                for chunk in chunks:
                    state = decoder.step(state, chunk[:batch], step_lengths)
                    decoder.result(state)  # read every step, as a streaming client would
                return decoder.result(state)

            def theirs_stream(beam=beam):
                hypos, state = None, None
                with torch.no_grad():
                    for chunk in chunks:
                        hypos, state = searcher.infer(
                            torch.from_numpy(chunk[0]), torch.tensor(S + R), beam, state, hypos
                        )
                return hypos

            ours_stream(1)
            ours_stream(args.batch)
            s1 = median_time(lambda: ours_stream(1), r)
            sn = median_time(lambda: ours_stream(args.batch), r)
            st = median_time(theirs_stream, 1 + args.torch_repeats) if use_torch else None
            stream_rows.append((beam, s1, sn, st, segments))
            print({"stream_beam": beam, "ours_1": s1, "ours_n": sn, "theirs": st}, flush=True)

    n = args.batch
    print("\n| measurement | torchaudio | streamformer | speed-up |")
    print("|---|---|---|---|")
    for line in rows:
        beam, t1, tn, th = line["beam"], line["ours_1"], line["ours_n"], line.get("theirs")
        sp1 = f"{th / t1:.2f}x" if th else "-"
        spn = f"{n * th / tn:.1f}x" if th else "-"
        ths = f"{th:.3f} s" if th else "-"
        thn = f"{n * th:.1f} s (batch-1 time x {n})" if th else "-"
        print(f"| beam {beam}, 10 s, batch 1 (per utterance) | {ths} | {t1:.3f} s | {sp1} |")
        print(
            f"| beam {beam}, {n} x 10 s in one batch | {thn} | {tn:.2f} s ({tn / n:.3f} s per utterance) | "
            f"{spn} |"
        )
    print(f"| greedy, 10 s, batch 1 | - | {g1:.3f} s | - |")
    print(f"| greedy, {n} x 10 s in one batch | - | {gn:.2f} s ({gn / n:.3f} s per utterance) | - |")
    for beam, s1, sn, st, segments in stream_rows:
        sp = f"{st / s1:.2f}x" if st else "-"
        sts = f"{st:.3f} s ({1e3 * st / segments:.1f} ms/segment)" if st else "-"
        print(
            f"| streaming beam {beam}, 10 s, batch 1 ({segments} steps) | {sts} | {s1:.3f} s "
            f"({1e3 * s1 / segments:.1f} ms/segment) | {sp} |"
        )
        spn = f"{n * st / sn:.1f}x" if st else "-"
        print(
            f"| streaming beam {beam}, {n} streams x 10 s | {f'{n * st:.1f} s' if st else '-'} | "
            f"{sn:.2f} s | "
            f"{spn} |"
        )
    print(
        "\ncompile times (first call, s): "
        + ", ".join(
            f"beam {x['beam']}: {x['compile_1']:.1f} (batch 1), {x['compile_n']:.1f} (batch {n})"
            for x in rows
        )
        + f", greedy: {greedy_compile:.1f} (both)"
    )
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
