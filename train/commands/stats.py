"""``python -m train stats``: global feature statistics (torchaudio's global_stats.json format) of a dataset's
training split."""

from __future__ import annotations

from pathlib import Path

from streamformer.features import compute_global_stats

from ..config import DataConfig
from ..corpora.audio import audio_of
from ..corpora.prepare import load_corpus, log_mel_features
from ..workdir import say

__all__ = ["stats"]


def stats(data: str, out: Path, *, synth_size: int = 1000) -> dict:
    """Statistics of ``data`` ("synth", a LibriSpeech folder or a JSON-lines manifest) written to ``out``."""
    items = load_corpus(DataConfig(train=data, synth_sizes=(synth_size, 0, 0)), "train")
    compute_global_stats(log_mel_features([audio_of(item) for item in items])).save(out)
    say(f"wrote {out}: statistics of {len(items)} utterances")
    return {"utterances": len(items)}
