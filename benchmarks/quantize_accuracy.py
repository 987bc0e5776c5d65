"""Accuracy of quantised weights on a trained model: test WER and CER with float32, int8 and bfloat16 weights
(``streamformer.quantize``), offline and streaming, greedy and modified beam search, and the change from
float32 in points (the goal: at most 0.2 points absolute).

Run: ``python benchmarks/quantize_accuracy.py --workdir runs/main [--beam 4] [--split test] [--limit N]
[--set data.test=...]`` (a workdir of ``python -m train main`` or of any run with a checkpoint; ``--set``
overrides the run's config as the trainer's does: the real-speech job's test set of unseen speakers is
``--set data.test=<corpus>/test-unseen.jsonl``).
"""

from __future__ import annotations

import argparse
import os
import platform

from _trained import load_run, score

import streamformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--split", nargs="+", default=["test"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--weights", nargs="+", default=["float32", "int8", "bfloat16"])
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. data.test=...")
    args = parser.parse_args()

    run, model, variables, step = load_run(args.workdir, args.set)
    pairs = {"float32": (model, variables)}
    for weights in args.weights:
        if weights != "float32":
            pairs[weights] = streamformer.quantize(model, variables, weights)
    print(
        f"workdir {args.workdir}, step {step}, test {run.config.data.test}; "
        f"{platform.processor() or platform.machine()}, load {os.getloadavg()[0]:.1f}"
    )
    print("\n| split | search | mode | weights | WER | CER | WER change (points) |")
    print("|---|---|---|---|---|---|---|")
    for split in args.split:
        examples = run.prepare(split)[: args.limit or None]
        for search in ("greedy", "modified_beam"):
            for streaming in (False, True):
                float_wer = None
                for weights in args.weights:
                    model_w, variables_w = pairs[weights]
                    rates, _, seconds = score(
                        model_w,
                        variables_w,
                        run.tokenizer,
                        examples,
                        search=search,
                        beam=args.beam,
                        streaming=streaming,
                    )
                    wer = 100 * rates["wer"]
                    float_wer = wer if weights == "float32" else float_wer
                    change = "" if float_wer is None or weights == "float32" else f"{wer - float_wer:+.2f}"
                    name = search if search == "greedy" else f"{search} {args.beam}"
                    print(
                        f"| {split} ({len(examples)}) | {name} | {'streaming' if streaming else 'offline'} | "
                        f"{weights} | {wer:.2f} % | {100 * rates['cer']:.2f} % | {change} |  "
                        f"<!-- {seconds:.1f} s -->",
                        flush=True,
                    )
    print(f"\nload at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
