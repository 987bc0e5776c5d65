"""``python -m train serve``: a checkpoint (or an exported artifact) served to live streams over WebSocket, with
a browser page (train/serve/); ``python -m train client``: files streamed to such a server."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ..workdir import Run, enable_compilation_cache, say

__all__ = ["DEFAULT_MAX_STREAMS", "client", "serve"]

DEFAULT_MAX_STREAMS = 32


def _positive(name: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ValueError(f"{name}: expected a positive {kind.__name__}, got {value!r}")


def serve(
    workdir: Path | None,
    config,
    *,
    exported: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 6006,
    max_streams: int | None = None,
    search: str | None = None,
    beam: int = 4,
    step: int | None = None,
    compilation_cache: str | os.PathLike | None = None,
    buffer_seconds: float = 2.0,
    idle_timeout: float = 60.0,
    quantize: str | None = None,
) -> dict:
    """Loads checkpoint ``step`` of ``workdir`` (or the artifact in ``exported``), compiles the step for
    ``max_streams`` slots, prints ``listening on ws://HOST:PORT`` and serves until SIGTERM. ``quantize``
    ("int8" or "bfloat16") serves the checkpoint with quantised weights (``streamformer.quantize``); an
    artifact keeps the weights it was exported with."""
    from ..serve.backends import CheckpointBackend, ExportedBackend
    from ..serve.batcher import Batcher
    from ..serve.server import serve as run_server

    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port: expected an int in [0, 65535] (0: any free port), got {port!r}")
    _positive("buffer_seconds", buffer_seconds, float)
    _positive("idle_timeout", idle_timeout, float)
    enable_compilation_cache(compilation_cache)
    if exported:
        if quantize is not None:
            raise ValueError(
                f"quantize: an exported artifact keeps the weights it was exported with, got --quantize {quantize}"
                " (export with --quantize instead)"
            )
        backend = ExportedBackend(exported)
        kind = backend.artifact.manifest["search"]["kind"]
        wanted = {"greedy": "GreedySearch", "modified_beam": "ModifiedBeamSearch"}.get(search or "", kind)
        if wanted != kind:
            raise ValueError(f"search: the artifact was exported with {kind}, got --search {search}")
        if max_streams is not None and max_streams != backend.batch_size:
            raise ValueError(
                f"max_streams: the artifact was exported for {backend.batch_size} streams, got --max-streams "
                f"{max_streams} (export with --batch-size {max_streams}, or leave --max-streams out)"
            )
    else:
        max_streams = DEFAULT_MAX_STREAMS if max_streams is None else max_streams
        _positive("max_streams", max_streams)
        run = Run(config, workdir)
        run.load_frontend()
        model, variables, restored = run.restore_variables(step)
        if quantize is not None:
            import streamformer

            model, variables = streamformer.quantize(model, variables, quantize)
        backend = CheckpointBackend(
            model, variables, run.tokenizer, run.stats, batch_size=max_streams, search=search or "greedy",
            beam=beam,
        )  # fmt: skip
        weights = f", {quantize} weights" if quantize else ""
        backend.description += f" step {restored} of {workdir}{weights}"
    say(f"serving {backend.description}: {backend.batch_size} streams at once; compiling...")
    return run_server(
        Batcher(backend), host=host, port=port, buffer_seconds=float(buffer_seconds),
        idle_timeout=float(idle_timeout),
    )  # fmt: skip


def client(files: Sequence[str], url: str = "ws://127.0.0.1:6006/", *, realtime: bool = False) -> dict:
    """Streams ``files`` (any format and rate ``transcribe`` reads; all at once, one connection each) to the
    server at ``url``, printing partial and final results; returns the transcripts."""
    from ..serve.client import stream_files
    from .transcribe import read_audio

    if not files:
        raise ValueError("files: expected audio files to stream, got none")
    if not isinstance(url, str) or not url.startswith(("ws://", "wss://")):
        raise ValueError(f"url: expected a ws:// or wss:// URL, got {url!r}")
    audios = {path: read_audio(path)[0] for path in files}
    try:
        outcomes = asyncio.run(stream_files(url, audios, realtime=realtime))
    except OSError as error:  # aiohttp's connection errors are OSErrors
        raise ValueError(f"url: cannot connect to {url} ({error})") from None
    errors = {path: o.error for path, o in outcomes.items() if o.error}
    for path, outcome in outcomes.items():
        print(f"{path}: {outcome.transcript.strip()}", flush=True)
    if errors:
        detail = "; ".join(f"{path}: {error}" for path, error in errors.items())
        raise ValueError(f"server: {len(errors)} of {len(files)} stream(s) failed ({detail})")
    sys.stdout.flush()
    return {"transcripts": {path: o.transcript for path, o in outcomes.items()}}
