"""What the commands share: a run's config, its data preparation, its model and the variables of its
checkpoints (``Run``)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

__all__ = ["Run", "config_for", "eval_split", "must_match", "print_rates", "say"]


def say(message: str) -> None:
    """A line for the person running the command (stderr)."""
    print(message, file=sys.stderr, flush=True)


def config_for(workdir, preset_name: str | None = None, overrides: list[str] | None = None):
    """A run's config: the workdir's config.json when resuming (no preset named), else the preset (default
    tiny); then ``--set`` overrides."""
    from .config import apply_overrides, from_dict, preset

    stored = Path(workdir) / "config.json"
    if preset_name is None and stored.exists():
        config = from_dict(json.loads(stored.read_text()))
    else:
        config = preset(preset_name or "tiny")
    return apply_overrides(config, overrides or [])


def must_match(config, num_symbols: int) -> dict:
    """The parts of a run's config that a checkpoint it resumes must have been written with."""
    return {"model": dataclasses.asdict(config.model), "num_symbols": num_symbols}


class Run:
    """What fit, eval and transcribe share: the config, data preparation, the model and its variables."""

    def __init__(self, config, workdir: Path):
        self.config, self.workdir = config, workdir
        self.tokenizer = self.stats = None
        self.examples: dict[str, list] = {}
        self.reports: dict = {}  # split -> screen.DataReport (the utterances skipped as unusable)

    def prepare(self, split: str) -> list:
        from .corpora import prepare

        if split not in self.examples:
            started = time.perf_counter()
            self.examples[split], self.tokenizer, self.stats = prepare.prepare_split(
                self.config, self.workdir, split, self.tokenizer, self.stats, reports=self.reports
            )
            say(
                f"{split}: {len(self.examples[split])} utterances ready "
                f"in {time.perf_counter() - started:.1f} s"
            )
        return self.examples[split]

    def load_frontend(self) -> None:
        from .corpora import prepare

        self.tokenizer = prepare.tokenizer_for(self.config, self.workdir, None)
        self.stats = prepare.global_stats_for(self.config, self.workdir, None)

    @property
    def num_symbols(self) -> int:
        from .corpora import prepare

        return prepare.check_fits(self.config, self.tokenizer, self.stats)

    def model(self):
        from .loop.step import build_model

        return build_model(
            self.config.model, self.num_symbols, simple_loss_projections=self.config.optim.loss == "pruned"
        )

    def restore_variables(self, step: int | None = None):
        """The parameters of checkpoint ``step`` (default: the latest) as model variables."""
        import jax

        from .loop.checkpoint import Checkpoints, abstract_like
        from .loop.mesh import Mesh1D
        from .loop.step import init_state, make_optimizer

        model = self.model()
        optimizer = make_optimizer(self.config.optim, self.config.loop.steps)
        abstract = jax.eval_shape(lambda: init_state(model, optimizer, self.config.loop.seed))
        checkpoints = Checkpoints(
            self.workdir / "checkpoints",
            self.config.loop.keep_checkpoints,
            must_match(self.config, self.num_symbols),
        )
        try:
            state = checkpoints.restore(abstract_like(abstract, Mesh1D().replicated), step)
        finally:
            checkpoints.close()
        return model, {"params": state.params}, int(state.step)


def eval_split(run: Run, model, variables, split: str, beam: int, streaming: bool, limit: int | None) -> dict:
    """Error rates (and five examples) of decoding ``split`` (its first ``limit`` utterances): greedy (beam 0)
    or beam search, offline or streaming; gathered over processes when there are several."""
    from .loop.batches import bucket_frames_for
    from .loop.multihost import evaluate  # one process: evaluation.evaluate; several: gathered

    examples = run.prepare(split)[: limit or None]
    started = time.perf_counter()
    rates, hypotheses = evaluate(
        model,
        variables,
        examples,
        run.tokenizer,
        beam_width=beam,
        streaming=streaming,
        bucket_frames=bucket_frames_for(run.config, examples),
    )
    rates.update(split=split, seconds=round(time.perf_counter() - started, 2))
    pairs = list(zip(examples, hypotheses, strict=True))[:5]
    rates["examples"] = [{"id": e.id, "reference": e.text, "hypothesis": h} for e, h in pairs]
    return rates


def print_rates(rates: dict) -> None:
    """One line of ``eval_split``'s rates."""
    say(
        f"{rates['split']} {rates['mode']} {rates['search']}: WER {100 * rates['wer']:.2f}% "
        f"CER {100 * rates['cer']:.2f}% ({rates['utterances']} utterances, {rates['words']} words, "
        f"{rates['seconds']:.1f} s)"
    )
