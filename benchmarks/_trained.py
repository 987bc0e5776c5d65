"""A trained run's model and its scored transcripts, shared by the benchmark scripts that decode a workdir's
checkpoint (imported as a sibling module: `python benchmarks/X.py`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from streamformer.train.commands.batch_transcribe import transcribe_features
from streamformer.train.evaluation import error_rates
from streamformer.train.workdir import Run, config_for


def load_run(workdir: str, overrides: Sequence[str] = ()) -> tuple[Run, object, dict, int]:
    """(run with its tokenizer and statistics, model, variables, step) of ``workdir``'s latest checkpoint."""
    run = Run(config_for(workdir, overrides=list(overrides)), Path(workdir))
    run.load_frontend()
    model, variables, step = run.restore_variables()
    return run, model, variables, step


def score(model, variables, tokenizer, examples, *, search: str, beam: int, streaming: bool):
    """(error rates, per-utterance results, seconds) of transcribing ``examples`` in batches of 32."""
    started = time.perf_counter()
    results = transcribe_features(
        model,
        variables,
        tokenizer,
        [e.features for e in examples],
        search=search,
        beam=beam,
        streaming=streaming,
        batch_size=32,
    )
    seconds = time.perf_counter() - started
    return error_rates([e.text for e in examples], [r["text"] for r in results]), results, seconds
