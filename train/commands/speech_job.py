"""The real-speech job: ``python -m train main --data espeak``.

Builds the espeak-ng English corpus (train/corpora/espeak.py) once, prepares it as a shard folder (<workdir>/shards:
features read from disk as training goes, so memory does not grow with the corpus), trains the ``speech`` preset on
it, evaluates the test sentences read by seen and by unseen speakers separately (offline and streaming, greedy and
beam; each condition also per text source, with the source's out-of-vocabulary rate), and streams one
unseen-speaker test file through the checkpoint. The corpus is in LibriSpeech layout, so the same preset trains on
LibriSpeech itself with ``fit --preset speech --set data.train=... --set data.dev=...``.

Along the way a learning curve is logged: greedy dev WER against training minutes (evaluation time not
counted) every ``loop.eval_every`` steps, in <workdir>/metrics.jsonl and results.json.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..config import apply_overrides
from ..corpora import espeak
from ..corpora.audio import read_manifest
from ..corpora.prepare_shards import prepare_shards
from ..loop.metrics import save_json
from ..workdir import Run, say, stored_or_preset
from .evaluate import evaluate_split, print_rates
from .fit import train_run
from .transcribe import transcribe_file

__all__ = ["LearningCurve", "speech_job"]


def speech_job(
    workdir: Path,
    *,
    corpus: Path | None = None,
    corpus_seed: int | None = None,
    corpus_sentences: int | None = None,
    preset_name: str | None = None,
    overrides: Sequence[str] = (),
    time_limit: float | None = None,
    beam: int = 4,
    eval_limit: int | None = None,
    test_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """The job behind ``main --data espeak``: the corpus built in ``corpus`` (default <workdir>/corpus) unless one
    is there already (a ``corpus_seed`` or ``corpus_sentences`` asks for another, which must then match), the
    ``speech`` preset (or the workdir's config, or ``preset_name``) trained on it with ``overrides``, the
    learning curve, the test conditions and one streamed unseen-speaker file."""
    started = time.perf_counter()
    # Absolute, as everything the run stores names its corpus and shard folder by path: eval, transcribe and
    # the benchmarks must find them from any working directory.
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = (corpus or workdir / "corpus").resolve()
    build_started = time.perf_counter()
    asked = corpus_seed is not None or corpus_sentences is not None
    if asked or not (corpus / "corpus.json").exists():  # else: a corpus already there is used as built
        espeak.build_corpus(
            corpus,
            espeak.EspeakCorpusConfig(seed=corpus_seed or 0, max_sentences=corpus_sentences or 0),
            say=say,
        )
    summary_corpus = json.loads((corpus / "corpus.json").read_text())
    say(
        f"corpus {corpus}: {summary_corpus['splits']['train']['hours']:.2f} h of training speech "
        f"({time.perf_counter() - build_started:.0f} s here; built in {summary_corpus['build_seconds']} s)"
    )

    config = stored_or_preset(workdir, preset_name, default="speech")
    corpus_data = dataclasses.replace(
        config.data,
        train=str(corpus / "train"),
        dev=str(corpus / "dev"),
        test=str(corpus / "test-seen.jsonl"),
    )
    config = apply_overrides(dataclasses.replace(config, data=corpus_data), list(overrides))
    # Training reads the corpus from a shard folder (issue 20's path: features on disk, read as training goes),
    # so that memory does not grow with the corpus. Prepared once per workdir (its tokenizer is the run's), before
    # the curve's clock starts, as featurising is not training; dev and test stay on the corpus's folders.
    shards = workdir / "shards"
    index = prepare_shards(config, shards, say=say)
    run = Run(dataclasses.replace(config, data=dataclasses.replace(config.data, train=str(shards))), workdir)
    curve = LearningCurve(run, eval_limit)
    model, result = train_run(run, on_eval=curve.point, progress=progress, time_limit=time_limit)
    train_seconds = curve.train_seconds()  # the curve's clock: set-up included, evaluation excluded
    if run.config.loop.eval_every and (
        not curve.points or curve.points[-1]["step"] != int(result.state.step)
    ):
        curve.point(
            model, result.state, int(result.state.step)
        )  # the curve's last point: where training stopped
    say(
        f"trained to step {int(result.state.step)} in {train_seconds:.0f} s "
        f"(+{curve.eval_seconds:.0f} s of dev evaluation)"
    )

    model, variables, step = run.restore_variables()
    unseen_run = Run(
        dataclasses.replace(
            run.config, data=dataclasses.replace(run.config.data, test=str(corpus / "test-unseen.jsonl"))
        ),
        workdir,
    )
    unseen_run.tokenizer, unseen_run.stats = run.tokenizer, run.stats
    sources_file = corpus / "sources.json"  # absent in corpora built before there were several sources
    sources = json.loads(sources_file.read_text()) if sources_file.exists() else None
    results = []
    for speakers, which in (("seen", run), ("unseen", unseen_run)):
        for width in (0, beam):
            for streaming in (False, True):
                rates = evaluate_split(
                    which,
                    model,
                    variables,
                    "test",
                    beam=width,
                    streaming=streaming,
                    limit=test_limit,
                    groups=sources,
                )
                rates["speakers"] = speakers
                print_rates(rates, prefix=f"{speakers} speakers: ")
                results.append(rates)

    entry = unseen_run.prepare("test")[0]
    audio_path = next(e.path for e in read_manifest(corpus / "test-unseen.jsonl") if e.id == entry.id)
    say(f"streaming {audio_path} (reference: {entry.text!r})")
    hypothesis = transcribe_file(run, model, variables, str(audio_path))
    summary = {
        "workdir": str(workdir),
        "corpus": {
            "root": str(corpus),
            **summary_corpus["splits"],
            **{k: summary_corpus[k] for k in ("sentences", "vocabulary", "sources") if k in summary_corpus},
            "build_seconds": summary_corpus["build_seconds"],
        },
        "shards": {"folder": str(shards), "prepare_seconds": index["prepare_seconds"]},
        "steps": int(result.state.step),
        "train_seconds": round(train_seconds, 1),
        "curve": curve.points,
        "test": [
            {k: r[k] for k in ("speakers", "mode", "search", "wer", "cer", "utterances", "words", "seconds")}
            | {"sources": {name: _rates_of(group) for name, group in r.get("groups", {}).items()}}
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


def _rates_of(group: dict) -> dict:
    return {k: group[k] for k in ("wer", "cer", "utterances", "words")}


class LearningCurve:
    """Greedy dev error rates against minutes of training (evaluation time not counted), one point per call
    of ``point`` (the trainer's on_eval)."""

    def __init__(self, run: Run, eval_limit: int | None):
        self.run, self.eval_limit = run, eval_limit
        self.points: list[dict] = []
        self.eval_seconds = 0.0
        self.started = time.perf_counter()

    def train_seconds(self) -> float:
        return time.perf_counter() - self.started - self.eval_seconds

    def point(self, model, state, step: int) -> dict:
        begin = time.perf_counter()
        minutes = self.train_seconds() / 60
        rates = evaluate_split(self.run, model, {"params": state.params}, "dev", limit=self.eval_limit)
        self.eval_seconds += time.perf_counter() - begin
        point = {"step": step, "train_minutes": round(minutes, 2), "wer": rates["wer"], "cer": rates["cer"]}
        self.points.append(point)
        say(
            f"step {step} ({minutes:.1f} min of training): "
            f"dev WER {100 * rates['wer']:.1f}% CER {100 * rates['cer']:.1f}%"
        )
        return {k: rates[k] for k in ("wer", "cer", "split", "search", "mode")} | {
            "train_minutes": point["train_minutes"]
        }
