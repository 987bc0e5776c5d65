"""``python -m train main``: the README's main job on the embedded dataset: a small Emformer RNN-T trained on it,
its test WER offline and streaming, a checkpoint, and one test file transcribed as a stream. (With
``--data espeak`` the command runs ``speech_job`` instead.)"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from pathlib import Path

from ..corpora import synth
from ..loop.metrics import save_json
from ..workdir import Run, config_for, say
from .evaluate import evaluate_split, print_rates
from .fit import fit
from .transcribe import transcribe_file

__all__ = ["main_job"]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main_job(
    workdir: Path,
    *,
    preset_name: str | None = None,
    overrides: Sequence[str] = (),
    time_limit: float | None = None,
    progress: bool = True,
) -> dict:
    """Trains ``preset_name`` (default tiny) with ``overrides`` within ``time_limit`` seconds, then
    the test split's error rates offline and streaming and one streamed test file; results in
    <workdir>/results.json."""
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    summary = {"workdir": str(workdir)}
    config = config_for(workdir, preset_name or "tiny", list(overrides))
    summary.update(fit(workdir, config, time_limit=time_limit, evaluate=False, progress=progress))
    if summary.get("preempted"):
        return summary

    run = Run(config, workdir)
    run.load_frontend()
    model, variables, step = run.restore_variables()
    results = []
    for streaming in (False, True):
        rates = evaluate_split(run, model, variables, "test", streaming=streaming)
        print_rates(rates)
        results.append(rates)
    summary["test"] = results

    # One test utterance written as a file, then streamed through the checkpoint.
    utterance = synth.synthesize(synth.SynthConfig(seed=run.config.data.synth_seed), "test", 0)
    audio_dir = workdir / "audio"
    if not audio_dir.exists():
        synth.write_librispeech([utterance], audio_dir)
    audio_path = next(audio_dir.rglob(f"{utterance.id}.flac"))
    say(f"streaming {audio_path} (reference: {utterance.text!r})")
    summary["transcribe"] = {
        "file": str(audio_path),
        "reference": utterance.text,
        "hypothesis": transcribe_file(run, model, variables, str(audio_path)),
    }
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 1)
    save_json(workdir / "results.json", summary)
    offline, streamed = results
    say(
        f"main job done in {summary['wall_seconds']} s wall ({summary['cpu_seconds']} s CPU): test WER "
        f"{100 * offline['wer']:.2f}% offline, {100 * streamed['wer']:.2f}% streaming; checkpoint step {step} "
        f"in {workdir / 'checkpoints'}; results in {workdir / 'results.json'}"
    )
    return summary
