"""Screening a corpus for unusable utterances before training starts, so a bad file never stops a run hours in.

An utterance is unusable when its audio cannot be decoded, holds no samples or is silent (``data.load_audio``'s
checks), or when its transcript has characters the tokenizer cannot encode. By default such utterances are
skipped: each is named in the log (the first 20) and all are counted in a ``DataReport`` that the trainer
writes to metrics.jsonl and TensorBoard. With ``data.strict=true`` the first screening raises BadDataError
listing them instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BadDataError", "DataReport", "Rejected", "load_audios", "encodable", "finish"]

logger = logging.getLogger(__name__)

_LOGGED = 20  # files named in the log; the report keeps all of them
_RECORDED = 100  # files named in the metrics record


class BadDataError(ValueError):
    """data.strict is set and the corpus holds unusable utterances (all listed)."""


@dataclass(frozen=True)
class Rejected:
    """One skipped utterance: its id, its audio file and why."""

    id: str
    path: str
    reason: str


@dataclass
class DataReport:
    """What screening a split found: ``total`` utterances listed, ``rejected`` the skipped ones."""

    split: str
    total: int
    rejected: list[Rejected] = field(default_factory=list)

    def record(self) -> dict:
        """The metrics record (kind "data"): counts by reason and the first skipped files."""
        reasons: dict[str, int] = {}
        for item in self.rejected:
            key = _reason_kind(item.reason)
            reasons[key] = reasons.get(key, 0) + 1
        return {
            "kind": "data",
            "split": self.split,
            "utterances": self.total - len(self.rejected),
            "skipped": len(self.rejected),
            "skipped_by_reason": reasons,
            "skipped_files": [f"{r.path}: {r.reason}" for r in self.rejected[:_RECORDED]],
        }


def _reason_kind(reason: str) -> str:
    for key in ("transcript", "cannot decode", "empty", "silent"):
        if key in reason:
            return key.replace(" ", "_")
    return "other"


def _path_of(item) -> str:
    return str(getattr(item, "path", "") or f"<{item.id}>")


def load_audios(
    items: Sequence, load: Callable[[object], np.ndarray], report: DataReport
) -> tuple[list, list[np.ndarray]]:
    """(usable items, their audio): ``load(item)`` for each; a ValueError or OSError (undecodable, empty,
    silent, unreadable) rejects the item into ``report``."""
    kept, audios = [], []
    for item in items:
        try:
            audio = load(item)
        except (ValueError, OSError) as error:
            path = _path_of(item)
            reason = str(error).removeprefix(f"{path}: ")
            report.rejected.append(Rejected(item.id, path, reason))
            continue
        kept.append(item)
        audios.append(audio)
    return kept, audios


def encodable(
    items: Sequence, data: Sequence[np.ndarray], encode: Callable[[str], object], report: DataReport
) -> tuple[list, list[np.ndarray]]:
    """The items (and their ``data``: audio or features, one per item) whose text ``encode`` accepts; a
    ValueError (characters the tokenizer cannot encode) rejects the item into ``report``."""
    kept, kept_data = [], []
    for item, datum in zip(items, data, strict=True):
        try:
            encode(item.text)
        except ValueError as error:
            report.rejected.append(Rejected(item.id, _path_of(item), f"transcript: {error}"))
            continue
        kept.append(item)
        kept_data.append(datum)
    return kept, kept_data


def finish(report: DataReport, strict: bool) -> DataReport:
    """Logs the skipped utterances (one warning line each, the first 20) or, when ``strict``, raises
    BadDataError listing every one."""
    rejected = report.rejected
    if not rejected:
        return report
    lines = [f"{r.path} ({r.id}): {r.reason}" for r in rejected]
    if strict:
        raise BadDataError(
            f"data.{report.split}: {len(rejected)} of {report.total} utterances are unusable (data.strict=true; "
            "set it to false to skip them):\n  " + "\n  ".join(lines)
        )
    logger.warning(
        "data.%s: skipping %d of %d utterances (unusable audio or transcript; data.strict=true makes this an "
        "error)",
        report.split,
        len(rejected),
        report.total,
    )
    for line in lines[:_LOGGED]:
        logger.warning("data.%s: skipped %s", report.split, line)
    if len(lines) > _LOGGED:
        logger.warning(
            "data.%s: ... and %d more (listed in metrics.jsonl)", report.split, len(lines) - _LOGGED
        )
    return report
