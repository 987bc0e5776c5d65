"""``python -m train fit``: train a run (resuming from its latest checkpoint), then its dev error rates.

``train_run`` is what every job that trains shares: the training split prepared and checked, the model built,
``loop.trainer.fit`` run with the run's tokenizer and the checkpoint's compatibility key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from ..config import Config
from ..loop.trainer import FitResult
from ..loop.trainer import fit as fit_loop
from ..workdir import Run, must_match, say
from .evaluate import evaluate_split, print_rates

__all__ = ["fit", "train_run"]


def train_run(
    run: Run,
    *,
    on_eval: Callable | None = None,
    progress: bool = True,
    time_limit: float | None = None,
) -> tuple[object, FitResult]:
    """(model, result) of training ``run`` from its training split; ``on_eval(model, state, step) -> dict`` is
    called every ``loop.eval_every`` steps and its dict logged (see ``loop.trainer.fit``)."""
    config = run.config
    run.workdir.mkdir(parents=True, exist_ok=True)
    source = run.train_source()
    model = run.model()
    result = fit_loop(
        config,
        run.workdir,
        model,
        source,
        blank=run.tokenizer.blank_id,
        must_match=must_match(config, run.num_symbols),
        on_eval=functools.partial(on_eval, model) if on_eval and config.loop.eval_every else None,
        records=[run.reports["train"].record()] if "train" in run.reports else [],
        progress=progress,
        time_limit=time_limit,
    )
    return model, result


def fit(
    workdir: Path,
    config: Config,
    *,
    time_limit: float | None = None,
    evaluate: bool = True,
    eval_limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Trains, then (``evaluate``) decodes the dev split greedily; returns the summary the command prints."""
    run = Run(config, workdir)

    def on_eval(model, state, step):
        rates = evaluate_split(run, model, {"params": state.params}, "dev", limit=eval_limit)
        print_rates(rates)
        return {k: rates[k] for k in ("wer", "cer", "split", "search", "mode")}

    model, result = train_run(run, on_eval=on_eval, progress=progress, time_limit=time_limit)
    summary = {
        "steps": int(result.state.step),
        "skipped": result.skipped,
        "train_seconds": round(result.seconds, 1),
        "final_loss": result.losses[max(result.losses)] if result.losses else None,
    }
    say(
        f"trained to step {summary['steps']} in {summary['train_seconds']} s "
        f"(skipped non-finite steps: {result.skipped})"
    )
    if result.preempted:
        summary["preempted"] = result.preempted
        say(
            f"stopped by {result.preempted} at step {summary['steps']}: checkpoint saved in "
            f"{workdir / 'checkpoints'}; run the same command to resume"
        )
        return summary
    if evaluate:
        rates = evaluate_split(run, model, {"params": result.state.params}, "dev", limit=eval_limit)
        print_rates(rates)
        summary["dev"] = rates
    return summary
