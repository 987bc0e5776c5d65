"""The real-speech job: ``python -m train main --data espeak``.

Builds the espeak-ng English corpus (train/espeak.py) once, trains the ``speech`` preset on it, evaluates the
test sentences read by seen and by unseen speakers separately (offline and streaming, greedy and beam), and
streams one unseen-speaker test file through the checkpoint. The corpus is in LibriSpeech layout, so the same
preset trains on LibriSpeech itself with ``fit --preset speech --set data.train=... --set data.dev=...``.

Along the way a learning curve is logged: greedy dev WER against training minutes (evaluation time not
counted) every ``loop.eval_every`` steps, in <workdir>/metrics.jsonl and results.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

__all__ = ["run_speech_job"]


def run_speech_job(args) -> dict:
    """The job behind ``main --data espeak``; ``args`` are the main command's parsed arguments."""
    from ..config import apply_overrides, from_dict, preset
    from ..corpora import espeak, prepare
    from ..loop.batches import bucket_frames_for
    from ..loop.metrics import save_json
    from ..loop.trainer import fit
    from ..workdir import Run, eval_split, must_match, say
    from .transcribe import transcribe_file

    started = time.perf_counter()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = Path(args.corpus) if args.corpus else workdir / "corpus"
    build_started = time.perf_counter()
    asked = args.corpus_seed is not None or args.corpus_sentences is not None
    if asked or not (corpus / "corpus.json").exists():  # else: a corpus already there is used as built
        espeak.build_corpus(
            corpus,
            espeak.EspeakCorpusConfig(seed=args.corpus_seed or 0, max_sentences=args.corpus_sentences or 0),
        )
    summary_corpus = json.loads((corpus / "corpus.json").read_text())
    say(
        f"corpus {corpus}: {summary_corpus['splits']['train']['hours']:.2f} h of training speech "
        f"({time.perf_counter() - build_started:.0f} s here; built in {summary_corpus['build_seconds']} s)"
    )

    stored = workdir / "config.json"
    if args.preset is None and stored.exists():
        config = from_dict(json.loads(stored.read_text()))
    else:
        config = preset(args.preset or "speech")
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data,
            train=str(corpus / "train"),
            dev=str(corpus / "dev"),
            test=str(corpus / "test-seen.jsonl"),
        ),
    )
    config = apply_overrides(config, args.set or [])
    run = Run(config, workdir)
    train_examples = run.prepare("train")
    prepare.check_finite(train_examples, "train")
    model = run.model()

    clock = {"eval": 0.0, "start": None}
    curve = []

    def on_eval(state, step):
        begin = time.perf_counter()
        minutes = (begin - clock["start"] - clock["eval"]) / 60
        rates = eval_split(run, model, {"params": state.params}, "dev", 0, False, args.eval_limit)
        clock["eval"] += time.perf_counter() - begin
        point = {"step": step, "train_minutes": round(minutes, 2), "wer": rates["wer"], "cer": rates["cer"]}
        curve.append(point)
        say(
            f"step {step} ({minutes:.1f} min of training): "
            f"dev WER {100 * rates['wer']:.1f}% CER {100 * rates['cer']:.1f}%"
        )
        return {k: rates[k] for k in ("wer", "cer", "split", "search", "mode")} | {
            "train_minutes": point["train_minutes"]
        }

    clock["start"] = time.perf_counter()
    result = fit(
        config,
        workdir,
        model,
        train_examples,
        bucket_frames_for(config, train_examples),
        blank=run.tokenizer.blank_id,
        must_match=must_match(config, run.num_symbols),
        on_eval=on_eval if config.loop.eval_every else None,
        progress=not args.quiet,
        time_limit=args.time_limit,
    )
    train_seconds = time.perf_counter() - clock["start"] - clock["eval"]  # the curve's clock: set-up included
    if config.loop.eval_every and (not curve or curve[-1]["step"] != int(result.state.step)):
        on_eval(result.state, int(result.state.step))  # the curve's last point: where training stopped
    say(
        f"trained to step {int(result.state.step)} in {train_seconds:.0f} s (+{clock['eval']:.0f} s of dev evaluation)"
    )

    model, variables, step = run.restore_variables()
    unseen_run = Run(
        dataclasses.replace(
            config, data=dataclasses.replace(config.data, test=str(corpus / "test-unseen.jsonl"))
        ),
        workdir,
    )
    unseen_run.tokenizer, unseen_run.stats = run.tokenizer, run.stats
    results = []
    for speakers, which in (("seen", run), ("unseen", unseen_run)):
        for beam in (0, args.beam):
            for streaming in (False, True):
                rates = eval_split(which, model, variables, "test", beam, streaming, args.test_limit)
                rates["speakers"] = speakers
                say(f"{speakers} speakers: " + _rates_line(rates))
                results.append(rates)

    entry = unseen_run.prepare("test")[0]
    audio_path = next(e.path for e in unseen_run_entries(corpus) if e.id == entry.id)
    say(f"streaming {audio_path} (reference: {entry.text!r})")
    hypothesis = transcribe_file(run, model, variables, str(audio_path))
    summary = {
        "workdir": str(workdir),
        "corpus": {
            "root": str(corpus),
            **summary_corpus["splits"],
            "build_seconds": summary_corpus["build_seconds"],
        },
        "steps": int(result.state.step),
        "train_seconds": round(train_seconds, 1),
        "curve": curve,
        "test": [
            {k: r[k] for k in ("speakers", "mode", "search", "wer", "cer", "utterances", "words", "seconds")}
            for r in results
        ],
        "transcribe": {"file": str(audio_path), "reference": entry.text, "hypothesis": hypothesis},
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    save_json(workdir / "results.json", summary)
    best = {r["speakers"]: r for r in results if r["search"] == "greedy" and r["mode"] == "offline"}
    say(
        f"speech job done in {summary['wall_seconds']} s: test WER {100 * best['seen']['wer']:.1f}% (seen speakers), "
        f"{100 * best['unseen']['wer']:.1f}% (unseen), greedy offline; results in {workdir / 'results.json'}"
    )
    return summary


def unseen_run_entries(corpus: Path):
    from ..corpora.audio import read_manifest

    return read_manifest(corpus / "test-unseen.jsonl")


def _rates_line(rates: dict) -> str:
    return (
        f"test {rates['mode']} {rates['search']}: WER {100 * rates['wer']:.2f}% CER {100 * rates['cer']:.2f}% "
        f"({rates['utterances']} utterances, {rates['seconds']:.1f} s)"
    )
