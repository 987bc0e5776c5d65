"""The corpus text: real English sentences, normalised for reading aloud, split by sentence, and new training
texts recombined from phrases of the training sentences.

Source: the fortune-cookie database of the ``fortunate`` package (about 2,800 quotes collected by Brian M.
Clapper; the code is under a BSD-style licence, the database under Creative Commons Attribution 4.0), split
into sentences and normalised to lowercase words and apostrophes, 4 to 14 words each, sentences with digits or
symbols dropped (espeak-ng would read them in words the transcript does not hold).
"""

from __future__ import annotations

import importlib.resources
import re
from collections.abc import Sequence

import numpy as np

from .espeak_engine import EspeakUnavailableError

__all__ = ["load_sentences", "normalize_sentence", "recombine_sentences", "split_sentences"]


def normalize_sentence(sentence: str) -> str | None:
    """Lowercase words and inner apostrophes, or None when the sentence holds digits or symbols."""
    text = sentence.lower().replace("\u2019", "'").replace("`", "'")
    if re.search(r"[0-9@#$%&*+=<>/\\|_^~\[\]{}]", text):
        return None
    words = [w.strip("'") for w in re.sub(r"[^a-z' ]+", " ", text).split()]
    return " ".join(w for w in words if re.search("[a-z]", w)) or None


def load_sentences(min_words: int = 4, max_words: int = 14) -> list[str]:
    """The distinct normalised sentences (and, of longer ones, comma clauses) of the fortunes file, sorted."""
    try:
        source = importlib.resources.files("fortunate") / "fortunes"
        text = source.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise EspeakUnavailableError(
            "the sentence source is the 'fortunate' package: pip install 'streamformer[train]'"
        ) from error
    sentences: set[str] = set()
    for cookie in re.split(r"^%\s*$", text, flags=re.M):
        lines = [line.strip() for line in cookie.splitlines() if not re.match(r"^\s*(\u2015|--|-)", line)]
        for sentence in re.split(r"(?<=[.!?;:])\s+", " ".join(lines)):
            normal = normalize_sentence(sentence)
            if normal is None:
                continue
            pieces = [normal] if len(normal.split()) <= max_words else sentence.split(",")
            for piece in pieces:
                piece = normalize_sentence(piece) if piece is not normal else piece
                if piece and min_words <= len(piece.split()) <= max_words:
                    sentences.add(piece)
    return sorted(sentences)


def split_sentences(sentences: Sequence[str], seed: int, dev: int, test: int) -> dict[str, list[str]]:
    """Shuffle by ``seed`` and cut into dev, test and train (the rest); no sentence is in two splits."""
    if dev + test >= len(sentences):
        raise ValueError(
            f"dev + test: expected fewer than the {len(sentences)} sentences, got {dev} + {test}"
        )
    order = np.random.default_rng([seed, 7]).permutation(len(sentences))
    shuffled = [sentences[i] for i in order]
    return {"dev": shuffled[:dev], "test": shuffled[dev : dev + test], "train": shuffled[dev + test :]}


def recombine_sentences(
    sentences: Sequence[str],
    count: int,
    seed: int,
    min_words: int = 4,
    max_words: int = 14,
    exclude: Sequence[str] = (),
) -> list[str]:
    """``count`` new word sequences made of the training ``sentences``' own phrases, deterministic by ``seed``.

    Each is min_words..max_words words long (uniformly), joined from spans of 2-4 consecutive words of
    random sentences; none equals a sentence of ``sentences`` or ``exclude`` (pass the dev and test sentences)
    or another. Locally they read as English, globally they are new: a small model then cannot learn the
    training sentences by heart in its predictor (measured: 72 % of the words of training utterances right
    against 41 % of test ones without this), and only words of ``sentences`` occur, so held-out sentences stay
    held out.
    """
    if count < 0 or not sentences:
        raise ValueError(
            f"count, sentences: expected count >= 0 and some sentences, got {count}, {len(sentences)}"
        )
    rng = np.random.default_rng([seed, 8])
    words = [s.split() for s in sentences]
    taken, out = set(sentences) | set(exclude), []
    for _ in range(100 * count):
        if len(out) == count:
            break
        length = int(rng.integers(min_words, max_words + 1))
        picked: list[str] = []
        while len(picked) < length:
            source = words[int(rng.integers(len(words)))]
            span = int(rng.integers(2, 5))
            start = int(rng.integers(max(len(source) - span, 0) + 1))
            picked += source[start : start + span]
        text = " ".join(picked[:length])
        if text not in taken:
            taken.add(text)
            out.append(text)
    if len(out) < count:
        raise ValueError(f"count: {count} distinct recombinations asked, only {len(out)} found")
    return out


# --------------------------------------------------------------------------------------------------------
# The engine.
