"""Transcribing the audio files a user brings: ``python -m train transcribe --workdir RUN a.wav b.flac ...``.

- Any sample rate and channel count soundfile reads (WAV, FLAC, OGG, ...): channels are averaged to mono and
  the audio resampled to 16 kHz, both said in the log.
- Long files are streamed: log-mel features are computed chunk by chunk through one compiled shape (the frames
  equal the whole-file features), and each segment goes to the streaming decoder as soon as its look-ahead
  frames exist; partial transcripts are printed as they change.
- Silence gives an empty transcript (with a note), clipping a warning; neither stops anything.
- A missing, empty or undecodable file gets one line naming the file and why, and the batch goes on.
- The real-time factor is measured after the first segment, which carries the compilation; JAX's persistent
  compilation cache (``workdir.enable_compilation_cache``) makes the first segment of later runs come fast.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from ..workdir import Run, enable_compilation_cache, say
from .batch_transcribe import collect_items, transcribe_batch

__all__ = [
    "AudioInputError",
    "transcribe",
    "read_audio",
    "stream_chunks",
    "stream_features",
    "transcribe_file",
    "transcribe_files",
]

SAMPLE_RATE = 16000
HOP = 160  # samples per feature frame (10 ms)


class AudioInputError(ValueError):
    """An input file that cannot be transcribed; the message names the file and the reason."""


def read_audio(path: str | os.PathLike, block_frames: int = 1 << 20) -> tuple[np.ndarray, str]:
    """The file as mono float32 (N,) at 16 kHz and a note of what was done to it.

    Reads block by block (long files never exist twice in memory at their original channel count). Raises
    AudioInputError naming the file: no such file, a folder, an empty file, or one soundfile cannot decode.
    """
    from ..corpora.audio import resample
    from ..corpora.synth import import_soundfile

    sf = import_soundfile()
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path}: no such file")
    if path.is_dir():
        raise AudioInputError(f"{path}: is a folder, expected an audio file")
    if path.stat().st_size == 0:
        raise AudioInputError(f"{path}: empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as f:
            rate, channels = f.samplerate, f.channels
            parts = [block.mean(axis=1) for block in f.blocks(block_frames, dtype="float32", always_2d=True)]
    except (RuntimeError, TypeError, ValueError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioInputError(
            f"{path}: cannot decode audio ({error}); expected a file soundfile reads (WAV, FLAC, OGG, ...)"
        ) from None
    mono = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    if mono.size == 0:
        raise AudioInputError(f"{path}: holds no audio samples ({rate} Hz, {channels} channel(s))")
    notes = [f"{mono.size / rate:.2f} s, {rate} Hz, {channels} channel(s)"]
    if channels > 1:
        notes.append(f"down-mixed {channels} channels to mono")
    if rate != SAMPLE_RATE:
        mono = resample(mono, rate, SAMPLE_RATE)
        notes.append(f"resampled {rate} Hz -> {SAMPLE_RATE} Hz")
    peak = float(np.max(np.abs(mono)))
    clipped = int(np.sum(np.abs(mono) >= 0.999))
    if peak <= 1e-4:
        notes.append("silent (peak <= 1e-4 of full scale): expect an empty transcript")
    elif clipped > max(10, mono.size // 1000):
        notes.append(f"warning: clipped ({clipped} samples at full scale)")
    return mono, "; ".join(notes)


def stream_features(audio: np.ndarray, block_frames: int = 256) -> Iterator[np.ndarray]:
    """Unnormalized log-mel frames (n, 80) of ``audio`` (N,) at 16 kHz, ``block_frames`` at a time.

    Together they equal the whole-file features (N // 160 + 1 frames, torchaudio's centred frames with
    reflect padding at the file's edges), but every block goes through one compiled shape whatever the
    file's length: the file is fed to ``streamformer.features.LiveLogMel`` (the live streams' front end, which
    the server uses too) ``block_frames`` frames of samples at a time.
    """
    from streamformer.features import LiveLogMel

    live = LiveLogMel(1, block_frames)
    step = block_frames * HOP
    for begin in range(0, audio.size, step):
        live.push(0, audio[begin : begin + step])
        frames = live.frames()[0]
        if frames.size:
            yield frames
    live.finish(0)
    yield live.frames()[0]


def stream_chunks(
    frames: Iterator[np.ndarray], segment_length: int, right_context_length: int
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Segment chunks (1, S + R, F), lengths (1,) and the segment's end frame, each as soon as it can go:
    blocks of frames (n, F) as they come through ``SegmentLayout.feeder``, so the chunks are those of
    ``SegmentLayout.iter_chunks`` on the whole file (look-ahead past the end of the audio is zeros)."""
    from streamformer import SegmentLayout

    layout, feeder = SegmentLayout(segment_length, right_context_length), None

    def chunks():
        nonlocal feeder
        for block in frames:
            if feeder is None:
                feeder = layout.feeder(1, block.shape[1])
            yield from feeder.feed(block[None])
        if feeder is not None:
            yield from feeder.finish()

    end = 0
    for chunk, lengths in chunks():
        end += int(lengths[0]) - right_context_length  # the chunk's valid frames
        yield chunk, lengths, end


def transcribe_file(run, model, variables, path: str, beam: int = 0, out: TextIO | None = None) -> str:
    """Streams one audio file through the model, printing partial transcripts as segments arrive; the final
    transcript. Raises AudioInputError (naming the file) for a file that cannot be read."""
    from streamformer.decoding import BeamSearch, GreedySearch, StreamingDecoder

    from ..corpora.prepare import normalize

    out = out or sys.stdout
    audio, notes = read_audio(path)
    say(f"{path}: {notes}")
    search = GreedySearch() if beam == 0 else BeamSearch(beam)
    decoder = StreamingDecoder(model, variables, search=search, blank=run.tokenizer.blank_id)
    state = decoder.init(1)
    S, R = model.segment_length, model.right_context_length
    frames = (normalize(block, run.stats) for block in stream_features(audio))
    text, started, first_done, segments = "", time.perf_counter(), None, 0
    for chunk, lengths, end in stream_chunks(frames, S, R):
        state = decoder.step(state, chunk, lengths)
        partial = run.tokenizer.decode(decoder.result(state)[0][0].tokens)
        segments += 1
        if first_done is None:
            first_done = (time.perf_counter(), end)
        if partial != text:
            text = partial
            print(f"[{end / 100:6.2f} s] {text}", file=out, flush=True)
    finished = time.perf_counter()
    print(f"final: {text}", file=out, flush=True)
    first_seconds = first_done[0] - started if first_done else finished - started
    rest_audio = audio.size / SAMPLE_RATE - (first_done[1] / 100 if first_done else 0.0)
    rtf = (finished - first_done[0]) / rest_audio if first_done and rest_audio > 0.5 else math.nan
    say(
        f"{path}: {audio.size / SAMPLE_RATE:.2f} s of audio in {segments} segments of {S} frames + {R} "
        f"look-ahead; first segment after {first_seconds:.2f} s (compilation included), then real-time "
        f"factor {rtf:.3f}"
    )
    return text


def transcribe_files(
    run, model, variables, paths: Sequence[str], beam: int = 0, out: TextIO | None = None
) -> tuple[dict[str, str], dict[str, str]]:
    """Transcribe each file; a bad one is reported (``error: <file>: <why>``) and the batch goes on.

    Returns (transcripts by path, error messages by path)."""
    transcripts, errors = {}, {}
    for path in paths:
        try:
            transcripts[path] = transcribe_file(run, model, variables, path, beam, out)
        except AudioInputError as error:
            errors[path] = str(error)
            say(f"error: {error}")
    return transcripts, errors


def transcribe(
    workdir: Path,
    config,
    files: Sequence[str],
    *,
    beam: int = 0,
    step: int | None = None,
    compilation_cache: str | os.PathLike | None = None,
    manifest: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    search: str | None = None,
    streaming: bool = False,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """``python -m train transcribe``: each file streamed through checkpoint ``step`` (default: the latest)
    with partial transcripts printed; with ``out`` or ``manifest``, batch mode (``transcribe_batch``)."""
    if not files and not manifest:
        raise ValueError("files: expected audio files or --manifest FILE.jsonl, got neither")
    cache = enable_compilation_cache(compilation_cache)
    run = Run(config, workdir)
    run.load_frontend()
    model, variables, _ = run.restore_variables(step)
    say(f"compilation cache: {cache}")
    if out or manifest:
        items = collect_items(files, manifest)
        return transcribe_batch(
            run,
            model,
            variables,
            items,
            out=out,
            search=search,
            beam=beam,
            streaming=streaming,
            batch_size=batch_size,
            progress=progress,
        )
    transcripts, errors = transcribe_files(run, model, variables, files, beam)
    if errors:
        raise ValueError(f"{len(errors)} of {len(files)} file(s) could not be transcribed: {sorted(errors)}")
    return {"transcripts": transcripts}
