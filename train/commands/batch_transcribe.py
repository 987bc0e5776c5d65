"""Batch transcription: many audio files (or a JSON-lines manifest) through a checkpoint, offline in batches
of similar length or as a batch of streams, written as JSON lines with text, token ids and word times.

``python -m train transcribe --workdir W --out hyp.jsonl [--manifest m.jsonl] [FILES...]
[--search greedy|beam|modified_beam] [--beam K] [--streaming] [--batch-size N]``

A manifest line is a JSON object with "audio" (a path; relative paths are relative to the manifest's folder)
and optionally "id" (default: the file name without extension). Each output line: {"id", "audio",
"duration" (s), "text", "tokens", "words": [{"word", "start", "end"}] (seconds)}. The output file is written
once, atomically, at the end; a progress bar and the throughput go to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "SEARCHES",
    "Item",
    "collect_items",
    "read_manifest",
    "transcribe_batch",
    "transcribe_exported",
    "transcribe_features",
]

SEARCHES = ("greedy", "beam", "modified_beam")
SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Item:
    id: str
    audio: str


def read_manifest(path: str | os.PathLike) -> list[Item]:
    """The items of a JSON-lines manifest (blank lines skipped). Raises ValueError naming the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest: no file at {str(path)!r}")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"manifest {path}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("audio"), str) or not entry["audio"]:
            raise ValueError(
                f'manifest {path}: line {number}: expected an object with an "audio" path, got {line[:120]!r}'
            )
        audio = entry["audio"] if os.path.isabs(entry["audio"]) else str(path.parent / entry["audio"])
        items.append(Item(str(entry.get("id", Path(audio).stem)), audio))
    if not items:
        raise ValueError(f'manifest {path}: expected at least one line with an "audio" path, got none')
    return items


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, total: int, enabled: bool, out=None):
        self.total, self.done, self.enabled, self.out = total, 0, enabled, out or sys.stderr
        self.started = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            filled = int(30 * self.done / max(self.total, 1))
            elapsed = time.perf_counter() - self.started
            print(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} ({elapsed:.1f} s)",
                end="" if self.done < self.total else "\n",
                file=self.out,
                flush=True,
            )


def _check_search(search: str, beam: int) -> None:
    if search not in SEARCHES:
        raise ValueError(f"search: expected one of {', '.join(SEARCHES)}, got {search!r}")
    if search != "greedy" and (isinstance(beam, bool) or not isinstance(beam, int) or beam < 1):
        raise ValueError(f"beam: expected a beam width >= 1 for {search} search, got {beam!r}")


def _search_object(search: str, beam: int):
    """The search named ``search`` (checked by ``_check_search``), recording timestamps."""
    from streamformer.decoding import BeamSearch, GreedySearch, ModifiedBeamSearch

    if search == "greedy":
        return GreedySearch(return_timestamps=True)
    if search == "beam":
        return BeamSearch(beam, return_timestamps=True)
    return ModifiedBeamSearch(beam)


def _decode_batch(model, variables, features, lengths, *, search, blank, decoder=None):
    """[(tokens, frames)] of the best hypothesis per row of a padded batch (B, T + R, F); streaming when a
    decoder is given."""
    from streamformer.decoding import decode

    if decoder is not None:
        state = decoder.init(features.shape[0])
        R = model.right_context_length
        for chunk, chunk_lengths in model.layout.iter_chunks(features[:, : features.shape[1] - R], lengths):
            state = decoder.step(state, chunk, chunk_lengths)
        results = decoder.result(state)
    else:
        results = decode(model, variables, features, lengths, search, blank=blank)
    return [(h[0].tokens, h[0].timestamps) if h else ([], []) for h in results]


def transcribe_features(
    model,
    variables,
    tokenizer,
    features: Sequence[np.ndarray],
    *,
    search: str = "greedy",
    beam: int = 4,
    streaming: bool = False,
    batch_size: int = 16,
    hop_seconds: float = 0.01,
    on_batch: Callable[[int], None] | None = None,
) -> list[dict]:
    """Decodes normalized feature sequences (each (T, F)) in batches of similar length.

    Batches are padded to a whole number of segments plus R frames (few compiled shapes). ``tokenizer`` needs
    ``blank_id``, ``decode(ids)`` and ``sp_model.id_to_piece(id)`` (a ``streamformer.text.Tokenizer``).

    Returns:
        Per sequence, in the input order: {"text", "tokens", "frames", "words": [{"word", "start", "end"}]}.
    """
    from streamformer.decoding import StreamingDecoder, frame_period, word_times

    _check_search(search, beam)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    R = model.right_context_length
    period = frame_period(model.config, hop_seconds)
    chosen = _search_object(search, beam)
    decoder = None  # one streaming decoder (one compiled step) for every batch
    if streaming:
        decoder = StreamingDecoder(model, variables, search=chosen, blank=tokenizer.blank_id)
    order = np.argsort([f.shape[0] for f in features], kind="stable")
    out: list[dict | None] = [None] * len(features)
    for begin in range(0, len(order), batch_size):
        rows = order[begin : begin + batch_size]
        longest = max(1, max(features[i].shape[0] for i in rows))
        width = model.layout.padded_frames(longest)
        batch = np.zeros((batch_size, width + R, features[rows[0]].shape[1]), np.float32)
        lengths = np.zeros(batch_size, np.int32)  # the unused rows of a last batch decode nothing
        for r, i in enumerate(rows):
            batch[r, : features[i].shape[0]] = features[i]
            lengths[r] = features[i].shape[0]
        decoded = _decode_batch(
            model,
            variables,
            batch,
            lengths,
            search=chosen,
            blank=tokenizer.blank_id,
            decoder=decoder,
        )
        for r, i in enumerate(rows):
            tokens, frames = decoded[r]
            pieces = [tokenizer.sp_model.id_to_piece(int(t)) for t in tokens]
            words = word_times(pieces, frames, period)
            out[i] = {
                "text": tokenizer.decode(tokens),
                "tokens": [int(t) for t in tokens],
                "frames": [int(f) for f in frames],
                "words": [
                    {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words
                ],
            }
        if on_batch:
            on_batch(len(rows))
    return out


def transcribe_batch(
    run,
    model,
    variables,
    items: Sequence[Item],
    *,
    out: str | os.PathLike,
    search: str | None = None,
    beam: int = 0,
    streaming: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """The transcribe command's batch mode: ``items`` decoded in batches (``search``, default by ``beam``:
    greedy for 0, else beam search), written to ``out`` as JSON lines."""
    from ..corpora.audio import load_audio
    from ..corpora.prepare import log_mel_features, normalize

    _check_out(out)
    search = search or ("greedy" if beam == 0 else "beam")
    _check_search(search, beam)
    started = time.perf_counter()
    audios = [load_audio(item.audio) for item in items]
    features = [normalize(f, run.stats) for f in log_mel_features(audios)]
    decoded = transcribe_features(
        model,
        variables,
        run.tokenizer,
        features,
        search=search,
        beam=max(beam, 1),
        streaming=streaming,
        batch_size=batch_size,
        on_batch=_Progress(len(items), enabled=progress).advance,
    )
    return _write(out, items, audios, decoded, started, f"{'streaming' if streaming else 'offline'} {search}")


def collect_items(files: Sequence[str], manifest: str | os.PathLike | None = None) -> list[Item]:
    """The files named, then the manifest's entries."""
    items = [Item(Path(f).stem, f) for f in files]
    if manifest:
        items += read_manifest(manifest)
    if not items:
        raise ValueError("files: expected audio files or --manifest, got neither")
    return items


def _check_out(out) -> None:
    if not out:
        raise ValueError("out: expected --out FILE.jsonl for batch transcription, got none")


def _write(out, items, audios, decoded, started: float, label: str) -> dict:
    from streamformer import io as sf_io

    lines = []
    for item, audio, result in zip(items, audios, decoded, strict=True):
        result = {k: v for k, v in result.items() if k != "frames"}
        line = {"id": item.id, "audio": item.audio, "duration": round(audio.size / SAMPLE_RATE, 3), **result}
        lines.append(json.dumps(line))
    sf_io.atomic_write_text(out, "".join(line + "\n" for line in lines))
    seconds = time.perf_counter() - started
    audio_seconds = sum(a.size for a in audios) / SAMPLE_RATE
    print(
        f"{len(items)} files, {audio_seconds:.1f} s of audio in {seconds:.1f} s "
        f"({audio_seconds / max(seconds, 1e-9):.1f} s of audio per second, {label}); wrote {out}",
        file=sys.stderr,
        flush=True,
    )
    return {"files": len(items), "audio_seconds": audio_seconds, "seconds": seconds, "out": str(out)}


def transcribe_exported(
    directory: str | os.PathLike, items: Sequence[Item], *, out: str | os.PathLike, progress: bool = True
) -> dict:
    """``python -m train transcribe --exported DIR --out hyp.jsonl ...``: batch transcription with the
    exported artifact in ``directory`` (its offline program, tokenizer and statistics; no checkpoint, no
    model code)."""
    _check_out(out)
    from streamformer.decoding.exported_runtime import load_exported
    from streamformer.decoding.timestamps import word_times

    from ..corpora.audio import load_audio
    from ..corpora.prepare import log_mel_features

    started = time.perf_counter()
    artifact = load_exported(directory)
    m = artifact.manifest
    B, width, R = artifact.batch_size, m["max_frames"], m["right_context_length"]
    period = 0.01 * m["time_reduction_stride"]
    audios = [load_audio(item.audio) for item in items]
    features = [artifact.normalize(f) for f in log_mel_features(audios)]
    for item, f in zip(items, features, strict=True):
        if f.shape[0] > width:
            raise ValueError(
                f"{item.audio}: {f.shape[0]} frames, more than the artifact's max_frames = {width} "
                f"(export with a larger --max-frames)"
            )
    progress = _Progress(len(items), enabled=progress)
    decoded: list[dict] = []
    for begin in range(0, len(features), B):
        rows = features[begin : begin + B]
        batch = np.zeros((B, width + R, m["input_dim"]), np.float32)
        lengths = np.zeros(B, np.int32)
        for r, f in enumerate(rows):
            batch[r, : f.shape[0]], lengths[r] = f, f.shape[0]
        tokens, frames, counts = artifact.transcribe(batch, lengths)
        if np.any(counts > tokens.shape[1]):
            raise ValueError(
                f"max_tokens: a file emitted more than the artifact's {tokens.shape[1]} token slots"
            )
        for r in range(len(rows)):
            ids, stamps = tokens[r, : counts[r]].tolist(), frames[r, : counts[r]].tolist()
            words = word_times([artifact.piece(t) for t in ids], stamps, period)
            decoded.append(
                {
                    "text": artifact.decode(ids),
                    "tokens": ids,
                    "words": [
                        {"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)} for w in words
                    ],
                }
            )
        progress.advance(len(rows))
    return _write(out, items, audios, decoded, started, f"exported {m['search']['kind']}")
