"""Command line: ``python -m train {fit,eval,transcribe,export,prepare,serve,client,stats,main} ...``
(``python -m train CMD -h``; installed, ``python -m streamformer.train``). Only the argument parser and the
dispatch live here: each command is a function with typed arguments in train/commands/ (the README's Training
section shows them in use).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

__all__ = ["main", "parser"]

#: ``main``'s workdir and training budget per --data: the embedded job fits the README's 10 minutes; the
#: real-speech job is tuned for an hour of training on 2 CPU cores (benchmarks/speech_recipe.md).
MAIN_DEFAULTS = {"synth": ("runs/main", 480.0), "espeak": ("runs/speech", 3600.0)}


# fmt: off
def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m train", description="Train and evaluate Emformer RNN-T models.")
    commands = top.add_subparsers(dest="command", required=True)

    def command(name, help, workdir: str | None = "required"):
        p = commands.add_parser(name, help=help)
        p.add_argument("--workdir", required=workdir == "required", default=None,
                       help="run folder: config.json, tokenizer.model, global_stats.json, checkpoints/, metrics"
                       + ("" if workdir == "required" else f" (default: {workdir})"))
        p.add_argument("--preset", default=None, help="tiny, conv_tiny, base or speech (default: the workdir's "
                       "config, else tiny; main --data espeak: speech)")
        p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a config field, e.g. --set model.transformer_num_layers=2 (repeatable)")
        p.add_argument("--compilation-cache", default=os.environ.get("STREAMFORMER_COMPILATION_CACHE"),
                       help="folder for JAX's persistent compilation cache")
        p.add_argument("--coordinator-address", default=None, help="multi-host: jax.distributed coordinator")
        p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
        p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's id")
        return p

    def step_option(p):
        p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")

    def quantize_option(p, what):
        p.add_argument("--quantize", choices=["int8", "bfloat16"], default=None,
                       help=f"{what} (streamformer.quantize)")

    def training_options(p):
        p.add_argument("--time-limit", type=float, default=None,
                       help="stop training (with a checkpoint) after this many seconds (main: 480 with --data "
                       "synth, 3600 with --data espeak)")
        p.add_argument("--quiet", action="store_true", help="no progress line")

    fit = command("fit", "train (resumes from the workdir's latest checkpoint)")
    training_options(fit)
    fit.add_argument("--no-eval", action="store_true", help="skip the dev evaluation at the end")
    fit.add_argument("--eval-limit", type=int, default=None, help="evaluate on the first N dev utterances only")

    evaluate = command("eval", "WER and CER of a checkpoint")
    evaluate.add_argument("--split", nargs="+", default=["test"], choices=["train", "dev", "test"])
    evaluate.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    evaluate.add_argument("--streaming", action="store_true", help="decode segment by segment")
    evaluate.add_argument("--both", action="store_true", help="offline and streaming")
    evaluate.add_argument("--limit", type=int, default=None, help="first N utterances only")
    step_option(evaluate)

    transcribe = command("transcribe", "stream audio files through a checkpoint", workdir="none with --exported")
    transcribe.add_argument("files", nargs="*", help="audio files (WAV, FLAC, OGG...; any rate and channels)")
    transcribe.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    step_option(transcribe)
    transcribe.add_argument("--manifest", default=None, help='JSON-lines manifest ({"audio": path, "id": ...})')
    transcribe.add_argument("--out", default=None, help="write JSON lines here (batch mode)")
    transcribe.add_argument("--search", default=None, choices=["greedy", "beam", "modified_beam"],
                            help="batch mode search (default: by --beam)")
    transcribe.add_argument("--streaming", action="store_true", help="batch mode: decode as a batch of streams")
    transcribe.add_argument("--batch-size", type=int, default=16, help="batch mode: utterances per batch")
    transcribe.add_argument("--quiet", action="store_true", help="batch mode: no progress bar")
    transcribe.add_argument("--exported", default=None, help="batch mode with an exported artifact directory")

    export = command("export", "export a checkpoint's decoding (jax.export artifact)")
    step_option(export)
    export.add_argument("--out", required=True, help="artifact directory to write")
    export.add_argument("--beam", type=int, default=0, help="modified beam search width (0: greedy)")
    export.add_argument("--batch-size", type=int, default=1, help="streams / utterances per call")
    export.add_argument("--max-frames", type=int, default=1600, help="offline input frames (10 ms each)")
    quantize_option(export, "store the weights as int8 (about 4x smaller, faster on CPUs) or bfloat16")

    prepare = command("prepare", "a corpus (data.train/dev/test) into a shard folder that fit reads from disk",
                      workdir=None)
    prepare.add_argument("--out", required=True, help="the shard folder to write (resumes an interrupted one)")
    prepare.add_argument("--shard-size", type=int, default=1000, help="utterances per shard")
    prepare.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")

    serve = command("serve", "serve live streams over WebSocket, with a browser page",
                    workdir="none with --exported")
    step_option(serve)
    serve.add_argument("--exported", default=None, help="serve an exported artifact (no checkpoint)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=6006, help="port (default: 6006; 0: any free port)")
    serve.add_argument("--max-streams", type=int, default=None,
                       help="streams decoded at once, the compiled batch (default: 32; --exported: its batch)")
    serve.add_argument("--search", default=None, choices=["greedy", "modified_beam"], help="default: greedy")
    serve.add_argument("--beam", type=int, default=4, help="modified beam search width (default: 4)")
    serve.add_argument("--buffer-seconds", type=float, default=2.0,
                       help="audio a stream may have waiting before its connection stops reading (default: 2)")
    serve.add_argument("--idle-timeout", type=float, default=60.0,
                       help="seconds without a message before a stream is closed (default: 60)")
    quantize_option(serve, "serve the checkpoint with int8 (faster on CPUs) or bfloat16 weights")

    client = commands.add_parser("client", help="stream audio files to a server, print partial and final results")
    client.add_argument("files", nargs="+", help="audio files (any rate and channels), streamed at once")
    client.add_argument("--url", default="ws://127.0.0.1:6006/", help="server (default: ws://127.0.0.1:6006/)")
    client.add_argument("--realtime", action="store_true", help="send at real-time pace (default: at once)")

    stats = commands.add_parser("stats", help="global feature statistics of a dataset")
    stats.add_argument("--data", default="synth", help="'synth', a LibriSpeech folder or a JSON-lines manifest")
    stats.add_argument("--synth-size", type=int, default=1000, help="utterances when --data synth")
    stats.add_argument("--out", required=True, help="JSON file to write")

    job = command("main", "the main job: train the tiny model on the embedded data, test WER, checkpoint, "
                  "streaming transcription", workdir="runs/main, or runs/speech with --data espeak")
    training_options(job)
    job.add_argument("--data", choices=["synth", "espeak"], default="synth",
                     help="synth: the embedded dataset; espeak: real English read by espeak-ng voices")
    job.add_argument("--corpus", default=None, help="--data espeak: corpus folder (default <workdir>/corpus); "
                     "one already there is used as built, unless --corpus-seed/--corpus-sentences ask another")
    job.add_argument("--corpus-seed", type=int, default=None, help="--data espeak: the corpus's seed (0)")
    job.add_argument("--corpus-sentences", type=int, default=None, help="--data espeak: N sentences only (0: all)")
    job.add_argument("--beam", type=int, default=4, help="--data espeak: beam width of the beam evaluation")
    job.add_argument("--eval-limit", type=int, default=None, help="--data espeak: dev utterances in the curve")
    job.add_argument("--test-limit", type=int, default=None, help="--data espeak: N test utterances per condition")
    return top
# fmt: on


def run(args: argparse.Namespace) -> dict:
    """Runs the parsed command: the one place where arguments become typed calls."""
    from .commands import batch_transcribe, evaluate, export, fit, main_job, speech_job, stats, transcribe
    from .loop.multihost import initialize
    from .workdir import config_for, enable_compilation_cache

    if args.command == "stats":
        return stats.stats(args.data, Path(args.out), synth_size=args.synth_size)
    if args.command == "client":
        from .commands.serve import client

        return client(args.files, args.url, realtime=args.realtime)
    initialize(args.coordinator_address, args.num_processes, args.process_id)
    if args.command == "serve":
        from .commands.serve import serve

        workdir = Path(args.workdir) if args.workdir else None
        if workdir is None and not args.exported:
            raise ValueError("workdir: expected --workdir RUN or --exported DIR, got neither")
        return serve(
            workdir, config_for(workdir, args.preset, args.set) if workdir else None, exported=args.exported,
            host=args.host, port=args.port, max_streams=args.max_streams, search=args.search, beam=args.beam,
            step=args.step, compilation_cache=args.compilation_cache, buffer_seconds=args.buffer_seconds,
            idle_timeout=args.idle_timeout, quantize=args.quantize,
        )  # fmt: skip
    if args.compilation_cache and args.command != "transcribe":
        enable_compilation_cache(args.compilation_cache)
    if args.command == "main":
        default_workdir, default_limit = MAIN_DEFAULTS[args.data]
        workdir = Path(args.workdir or default_workdir)
        limit = default_limit if args.time_limit is None else args.time_limit
        if args.data == "espeak":
            return speech_job.speech_job(
                workdir, corpus=Path(args.corpus) if args.corpus else None, corpus_seed=args.corpus_seed,
                corpus_sentences=args.corpus_sentences, preset_name=args.preset, overrides=args.set,
                time_limit=limit, beam=args.beam, eval_limit=args.eval_limit, test_limit=args.test_limit,
                progress=not args.quiet,
            )  # fmt: skip
        return main_job.main_job(
            workdir, preset_name=args.preset, overrides=args.set, time_limit=limit, progress=not args.quiet
        )
    if args.command == "transcribe" and args.exported:  # an artifact: no workdir, no checkpoint
        enable_compilation_cache(args.compilation_cache)
        items = batch_transcribe.collect_items(args.files, args.manifest)
        return batch_transcribe.transcribe_exported(
            args.exported, items, out=args.out, progress=not args.quiet
        )
    if args.command == "prepare":
        from .config import apply_overrides, preset
        from .corpora.prepare_shards import prepare_shards
        from .workdir import say

        config = apply_overrides(preset(args.preset or "tiny"), args.set)
        return prepare_shards(config, args.out, shard_size=args.shard_size, workers=args.workers,
                              compilation_cache=args.compilation_cache, say=say)  # fmt: skip
    workdir = Path(args.workdir)
    config = config_for(workdir, args.preset, args.set)
    if args.command == "fit":
        return fit.fit(workdir, config, time_limit=args.time_limit, evaluate=not args.no_eval,
                       eval_limit=args.eval_limit, progress=not args.quiet)  # fmt: skip
    if args.command == "eval":
        results = evaluate.evaluate(
            workdir, config, splits=args.split, beam=args.beam, limit=args.limit, step=args.step,
            modes=(False, True) if args.both else (args.streaming,),
        )  # fmt: skip
        keys = ("split", "mode", "search", "wer", "cer", "utterances")
        print(json.dumps([{k: r[k] for k in keys} for r in results]))
        return {"results": results}
    if args.command == "transcribe":
        return transcribe.transcribe(
            workdir, config, args.files, beam=args.beam, step=args.step, compilation_cache=args.compilation_cache,
            manifest=args.manifest, out=args.out, search=args.search, streaming=args.streaming,
            batch_size=args.batch_size, progress=not args.quiet,
        )  # fmt: skip
    return export.export(workdir, config, args.out, beam=args.beam, batch_size=args.batch_size,
                         max_frames=args.max_frames, step=args.step, quantize=args.quantize)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
