"""``python -m train export``: a checkpoint's decoding as a jax.export artifact (streamformer.decoding.export),
with its tokenizer and feature statistics; ``python -m train transcribe --exported DIR`` runs it without the
model code."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import streamformer
from streamformer.decoding import GreedySearch, ModifiedBeamSearch
from streamformer.decoding.export import export_transducer

from ..config import Config
from ..workdir import Run

__all__ = ["export", "export_run"]


def export(
    workdir: Path,
    config: Config,
    out: str | os.PathLike,
    *,
    beam: int = 0,
    batch_size: int = 1,
    max_frames: int = 1600,
    step: int | None = None,
    quantize: str | None = None,
) -> dict:
    """``export_run`` of checkpoint ``step`` (default: the latest) of the run in ``workdir``."""
    run = Run(config, workdir)
    run.load_frontend()
    model, variables, _ = run.restore_variables(step)
    return export_run(
        run, model, variables, out, beam=beam, batch_size=batch_size, max_frames=max_frames, quantize=quantize
    )


def export_run(
    run,
    model,
    variables,
    out: str | os.PathLike,
    *,
    beam: int = 0,
    batch_size: int = 1,
    max_frames: int = 1600,
    quantize: str | None = None,
) -> dict:
    """The decoding of ``model`` with ``variables`` as a jax.export artifact in ``out`` (greedy, or modified
    beam search of width ``beam``), with the run's tokenizer and feature statistics; with ``quantize``
    ("int8" or "bfloat16") the weights are quantised first (``streamformer.quantize``)."""
    if not out:
        raise ValueError("out: expected --out DIRECTORY for the artifact, got none")
    if quantize is not None:
        model, variables = streamformer.quantize(model, variables, quantize)
    search = ModifiedBeamSearch(beam) if beam else GreedySearch()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = os.path.join(tmp, "global_stats.json")
        run.stats.save(stats_path)
        manifest = export_transducer(
            model,
            variables,
            out,
            search=search,
            batch_size=batch_size,
            max_frames=max_frames,
            # room for every token the search can emit in max_frames: offline results never overflow
            max_tokens=search.token_room(max(1, max_frames // model.config.time_reduction_stride)),
            blank=run.tokenizer.blank_id,
            tokenizer_path=run.tokenizer.model_path,
            global_stats_path=stats_path,
        )
    size = sum(f.stat().st_size for f in Path(out).iterdir())
    print(
        f"exported to {out} ({size / 1e6:.1f} MB, {model.config.weights} weights) in "
        f"{time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )
    return manifest
