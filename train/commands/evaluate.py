"""``python -m train eval``: word and character error rates of a checkpoint, and ``evaluate_split``, which the
other commands use for the same figures."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..config import Config
from ..evaluation import error_rates
from ..evaluation import evaluate as evaluate_examples
from ..loop.loader import bucket_frames_for
from ..loop.metrics import save_json
from ..workdir import Run, say

__all__ = ["evaluate", "evaluate_split", "print_rates"]


def evaluate_split(
    run: Run,
    model,
    variables,
    split: str,
    *,
    beam: int = 0,
    streaming: bool = False,
    limit: int | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict:
    """Error rates (and five examples) of decoding ``split`` (its first ``limit`` utterances): greedy (beam 0)
    or beam search, offline or streaming; gathered over processes when there are several. With ``groups``
    (utterance id -> group, e.g. the espeak corpus's text sources), also the rates of each group, under
    "groups" (utterances not in ``groups`` are left out of them)."""
    examples = run.prepare(split)[: limit or None]
    started = time.perf_counter()
    rates, hypotheses = evaluate_examples(
        model,
        variables,
        examples,
        run.tokenizer,
        beam_width=beam,
        streaming=streaming,
        bucket_frames=bucket_frames_for(run.config, [e.features.shape[0] for e in examples]),
    )
    rates.update(split=split, seconds=round(time.perf_counter() - started, 2))
    if groups is not None:
        members: dict[str, list[tuple[str, str]]] = {}
        for example, hypothesis in zip(examples, hypotheses, strict=True):
            if example.id in groups:
                members.setdefault(groups[example.id], []).append((example.text, hypothesis))
        rates["groups"] = {name: error_rates(*zip(*rows)) for name, rows in sorted(members.items())}
    pairs = list(zip(examples, hypotheses, strict=True))[:5]
    rates["examples"] = [{"id": e.id, "reference": e.text, "hypothesis": h} for e, h in pairs]
    return rates


def print_rates(rates: dict, prefix: str = "") -> None:
    """One line of ``evaluate_split``'s rates, and one per group when there are groups."""
    say(
        f"{prefix}{rates['split']} {rates['mode']} {rates['search']}: WER {100 * rates['wer']:.2f}% "
        f"CER {100 * rates['cer']:.2f}% ({rates['utterances']} utterances, {rates['words']} words, "
        f"{rates['seconds']:.1f} s)"
    )
    for name, group in rates.get("groups", {}).items():
        say(
            f"{prefix}  {name}: WER {100 * group['wer']:.2f}% CER {100 * group['cer']:.2f}% "
            f"({group['utterances']} utterances, {group['words']} words)"
        )


def evaluate(
    workdir: Path,
    config: Config,
    *,
    splits: Sequence[str] = ("test",),
    beam: int = 0,
    modes: Sequence[bool] = (False,),
    limit: int | None = None,
    step: int | None = None,
) -> list[dict]:
    """The rates of checkpoint ``step`` (default: the latest) on each split, for each mode (streaming True or
    False); also written to <workdir>/eval_step<step>.json."""
    run = Run(config, workdir)
    run.load_frontend()
    model, variables, step = run.restore_variables(step)
    results = []
    for split in splits:
        for streaming in modes:
            rates = evaluate_split(run, model, variables, split, beam=beam, streaming=streaming, limit=limit)
            rates["step"] = step
            print_rates(rates)
            results.append(rates)
    save_json(workdir / f"eval_step{step}.json", results)
    return results
