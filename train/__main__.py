"""Command line: ``python -m train {fit,eval,transcribe,stats,main} ...`` (``python -m train CMD -h``).

python -m train fit --workdir runs/tiny --preset tiny --set loop.steps=2000
python -m train eval --workdir runs/tiny --split test --beam 4 --streaming
python -m train transcribe --workdir runs/tiny some.flac
python -m train stats --data /data/LibriSpeech/train-clean-100 --out global_stats.json
python -m train main          # the README's main job: data, training, test WER, streaming transcription
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

from .workdir import Run, config_for, eval_split, must_match, print_rates
from .workdir import say as _say

__all__ = ["main"]

log = logging.getLogger("train")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _setup_jax(args) -> None:
    """Multi-host set-up (before any other JAX call) and the optional persistent compilation cache."""
    import jax

    if args.coordinator_address or args.num_processes or os.environ.get("STREAMFORMER_DISTRIBUTED"):
        jax.distributed.initialize(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    if args.compilation_cache:
        jax.config.update("jax_compilation_cache_dir", str(args.compilation_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _config_for(args):
    return config_for(args.workdir, args.preset, args.set)


# ----------------------------------------------------------------------------------------------------------
# Commands


def cmd_fit(args) -> dict:
    from .corpora import prepare
    from .loop.batches import bucket_frames_for
    from .loop.trainer import fit

    config = _config_for(args)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run = Run(config, workdir)
    train_examples = run.prepare("train")
    prepare.check_finite(train_examples, "train")
    model = run.model()
    on_eval = None
    if config.loop.eval_every:

        def on_eval(state, step):
            rates = eval_split(run, model, {"params": state.params}, "dev", 0, False, args.eval_limit)
            print_rates(rates)
            return {k: rates[k] for k in ("wer", "cer", "split", "search", "mode")}

    result = fit(
        config,
        workdir,
        model,
        train_examples,
        bucket_frames_for(config, train_examples),
        blank=run.tokenizer.blank_id,
        must_match=must_match(config, run.num_symbols),
        on_eval=on_eval,
        records=[run.reports["train"].record()] if "train" in run.reports else [],
        progress=not args.quiet,
        time_limit=args.time_limit,
    )
    summary = {
        "steps": int(result.state.step),
        "skipped": result.skipped,
        "train_seconds": round(result.seconds, 1),
        "final_loss": result.losses[max(result.losses)] if result.losses else None,
    }
    _say(
        f"trained to step {summary['steps']} in {summary['train_seconds']} s "
        f"(skipped non-finite steps: {result.skipped})"
    )
    if result.preempted:
        summary["preempted"] = result.preempted
        _say(
            f"stopped by {result.preempted} at step {summary['steps']}: checkpoint saved in "
            f"{workdir / 'checkpoints'}; run the same command to resume"
        )
        return summary
    if not args.no_eval:
        rates = eval_split(run, model, {"params": result.state.params}, "dev", 0, False, args.eval_limit)
        print_rates(rates)
        summary["dev"] = rates
    return summary


def cmd_eval(args) -> dict:
    from .loop.metrics import save_json

    run = Run(_config_for(args), Path(args.workdir))
    run.load_frontend()
    model, variables, step = run.restore_variables(args.step)
    results = []
    for split in args.split:
        for streaming in [False, True] if args.both else [args.streaming]:
            rates = eval_split(run, model, variables, split, args.beam, streaming, args.limit)
            rates["step"] = step
            print_rates(rates)
            results.append(rates)
    save_json(Path(args.workdir) / f"eval_step{step}.json", results)
    print(
        json.dumps(
            [{k: r[k] for k in ("split", "mode", "search", "wer", "cer", "utterances")} for r in results]
        )
    )
    return {"results": results}


def cmd_transcribe(args) -> dict:
    from .commands.transcribe import enable_compilation_cache, transcribe_files

    if not args.files and not args.manifest:
        raise ValueError("files: expected audio files or --manifest FILE.jsonl, got neither")
    cache = enable_compilation_cache(args.compilation_cache)
    if args.exported:  # an exported artifact: no workdir, no checkpoint (train/batch_transcribe.py)
        from .commands.batch_transcribe import cmd_transcribe_exported

        return cmd_transcribe_exported(args)
    run = Run(_config_for(args), Path(args.workdir))
    run.load_frontend()
    model, variables, _ = run.restore_variables(args.step)
    _say(f"compilation cache: {cache}")
    if args.out or args.manifest:  # batch mode: train/batch_transcribe.py
        from .commands.batch_transcribe import cmd_batch_transcribe

        return cmd_batch_transcribe(run, model, variables, args)
    transcripts, errors = transcribe_files(run, model, variables, args.files, args.beam)
    if errors:
        raise ValueError(
            f"{len(errors)} of {len(args.files)} file(s) could not be transcribed: {sorted(errors)}"
        )
    return {"transcripts": transcripts}


def cmd_export(args) -> dict:
    """A checkpoint's decoding as a jax.export artifact (train/batch_transcribe.py)."""
    from .commands.batch_transcribe import export_checkpoint

    run = Run(_config_for(args), Path(args.workdir))
    run.load_frontend()
    model, variables, _ = run.restore_variables(args.step)
    return export_checkpoint(run, model, variables, args)


def cmd_stats(args) -> dict:
    """Global feature statistics (torchaudio's global_stats.json format) of a dataset's train split."""
    from streamformer.features import compute_global_stats

    from .config import DataConfig
    from .corpora.audio import audio_of
    from .corpora.prepare import load_corpus, log_mel_features

    data = DataConfig(train=args.data, synth_sizes=(args.synth_size, 0, 0))
    items = load_corpus(data, "train")
    stats = compute_global_stats(log_mel_features([audio_of(item) for item in items]))
    stats.save(args.out)
    _say(f"wrote {args.out}: statistics of {len(items)} utterances")
    return {"utterances": len(items)}


#: ``main``'s workdir and training budget per --data: the embedded job fits the README's 10 minutes; the
#: real-speech job is tuned for an hour of training on 2 CPU cores (benchmarks/speech_recipe.md).
MAIN_DEFAULTS = {
    "synth": {"workdir": "runs/main", "time_limit": 480.0},
    "espeak": {"workdir": "runs/speech", "time_limit": 3600.0},
}


def cmd_main(args) -> dict:
    """The main job: the embedded dataset, a small Emformer RNN-T trained on it, its test WER (offline and
    streaming), a checkpoint, and one test file transcribed as a stream."""
    from .corpora import synth
    from .loop.metrics import save_json

    data_defaults = MAIN_DEFAULTS[args.data]
    args.workdir = args.workdir or data_defaults["workdir"]
    args.time_limit = data_defaults["time_limit"] if args.time_limit is None else args.time_limit
    if args.data == "espeak":
        from .commands.speech_job import run_speech_job

        return run_speech_job(args)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    workdir = Path(args.workdir)
    args.preset = args.preset or "tiny"
    args.no_eval, args.eval_limit = True, None
    summary = {"workdir": str(workdir)}
    fit_summary = cmd_fit(args)
    summary.update(fit_summary)
    if fit_summary.get("preempted"):
        return summary

    run = Run(_config_for(args), workdir)
    run.load_frontend()
    model, variables, step = run.restore_variables()
    results = []
    for streaming in (False, True):
        rates = eval_split(run, model, variables, "test", 0, streaming, None)
        print_rates(rates)
        results.append(rates)
    summary["test"] = results

    # One test utterance written as a file, then streamed through the checkpoint.
    test_config = run.config.data
    utterance = synth.synthesize(synth.SynthConfig(seed=test_config.synth_seed), "test", 0)
    audio_dir = workdir / "audio"
    if not audio_dir.exists():
        synth.write_librispeech([utterance], audio_dir)
    audio_path = next(audio_dir.rglob(f"{utterance.id}.flac"))
    _say(f"streaming {audio_path} (reference: {utterance.text!r})")
    from .commands.transcribe import transcribe_file

    summary["transcribe"] = {
        "file": str(audio_path),
        "reference": utterance.text,
        "hypothesis": transcribe_file(run, model, variables, str(audio_path)),
    }
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 1)
    save_json(workdir / "results.json", summary)
    offline = results[0]
    _say(
        f"main job done in {summary['wall_seconds']} s wall ({summary['cpu_seconds']} s CPU): test WER "
        f"{100 * offline['wer']:.2f}% offline, {100 * results[1]['wer']:.2f}% streaming; "
        f"checkpoint step {step} "
        f"in {workdir / 'checkpoints'}; results in {workdir / 'results.json'}"
    )
    return summary


# ----------------------------------------------------------------------------------------------------------
# Arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train", description="Train and evaluate Emformer RNN-T models."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def common(p, workdir_default_help=None):
        p.add_argument(
            "--workdir",
            required=workdir_default_help is None,
            help="run folder: config.json, tokenizer.model, global_stats.json, checkpoints/, metrics"
            + (f" (default: {workdir_default_help})" if workdir_default_help else ""),
        )
        p.add_argument(
            "--preset",
            default=None,
            help="tiny, conv_tiny, base or speech (default: the workdir's config, else tiny; "
            "main --data espeak: speech)",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="SECTION.KEY=VALUE",
            help="override a config field, e.g. --set model.transformer_num_layers=2 (repeatable)",
        )
        p.add_argument(
            "--compilation-cache",
            default=os.environ.get("STREAMFORMER_COMPILATION_CACHE"),
            help="folder for JAX's persistent compilation cache",
        )
        p.add_argument("--coordinator-address", default=None, help="multi-host: jax.distributed coordinator")
        p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
        p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's id")

    fit = commands.add_parser("fit", help="train (resumes from the workdir's latest checkpoint)")
    common(fit)
    fit.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="stop (with a checkpoint) after this many seconds of training",
    )
    fit.add_argument("--no-eval", action="store_true", help="skip the dev evaluation at the end")
    fit.add_argument(
        "--eval-limit", type=int, default=None, help="evaluate on the first N dev utterances only"
    )
    fit.add_argument("--quiet", action="store_true", help="no progress line")

    evaluate = commands.add_parser("eval", help="WER and CER of a checkpoint")
    common(evaluate)
    evaluate.add_argument("--split", nargs="+", default=["test"], choices=["train", "dev", "test"])
    evaluate.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    evaluate.add_argument("--streaming", action="store_true", help="decode segment by segment")
    evaluate.add_argument("--both", action="store_true", help="offline and streaming")
    evaluate.add_argument("--limit", type=int, default=None, help="first N utterances only")
    evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")

    transcribe = commands.add_parser("transcribe", help="stream audio files through a checkpoint")
    common(transcribe)
    transcribe.add_argument(
        "files", nargs="*", help="audio files (WAV, FLAC, OGG...; any rate and channel count, any length)"
    )
    transcribe.add_argument("--beam", type=int, default=0, help="beam width (0: greedy)")
    transcribe.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    from .commands.batch_transcribe import add_arguments as add_batch_arguments

    add_batch_arguments(transcribe)

    export = commands.add_parser("export", help="export a checkpoint's decoding (jax.export artifact)")
    common(export)
    export.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    from .commands.batch_transcribe import add_export_arguments

    add_export_arguments(export)

    stats = commands.add_parser("stats", help="global feature statistics of a dataset")
    stats.add_argument(
        "--data", default="synth", help="'synth', a LibriSpeech folder or a JSON-lines manifest"
    )
    stats.add_argument("--synth-size", type=int, default=1000, help="utterances when --data synth")
    stats.add_argument("--out", required=True, help="JSON file to write")

    job = commands.add_parser(
        "main",
        help="the main job: train the tiny model on the embedded data, test WER, "
        "checkpoint, streaming transcription",
    )
    common(job, workdir_default_help="runs/main, or runs/speech with --data espeak (MAIN_DEFAULTS)")
    job.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="training time budget in seconds (default: 480 with --data synth, 3600 with --data espeak)",
    )
    job.add_argument("--quiet", action="store_true", help="no progress line")
    job.add_argument(
        "--data",
        choices=["synth", "espeak"],
        default="synth",
        help="synth: the embedded dataset; espeak: real English read by espeak-ng voices (preset speech)",
    )
    job.add_argument(
        "--corpus",
        default=None,
        help="--data espeak: corpus folder (default <workdir>/corpus); a corpus already there is used as built, "
        "unless --corpus-seed or --corpus-sentences ask for another (then it must match)",
    )
    job.add_argument("--corpus-seed", type=int, default=None, help="--data espeak: the corpus's seed (0)")
    job.add_argument(
        "--corpus-sentences", type=int, default=None, help="--data espeak: use N sentences only (0: all)"
    )
    job.add_argument("--beam", type=int, default=4, help="--data espeak: beam width of the beam evaluation")
    job.add_argument(
        "--eval-limit", type=int, default=None, help="--data espeak: dev utterances in the learning curve"
    )
    job.add_argument(
        "--test-limit", type=int, default=None, help="--data espeak: first N test utterances per condition"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.command != "stats":
        _setup_jax(args)
    command = {
        "fit": cmd_fit,
        "eval": cmd_eval,
        "transcribe": cmd_transcribe,
        "stats": cmd_stats,
        "export": cmd_export,
        "main": cmd_main,
    }[args.command]
    try:
        command(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        _say(f"error: {error}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
