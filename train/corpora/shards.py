"""A prepared corpus on disk (a shard folder): the format, its index, and reading it without holding it in memory.

``python -m train prepare`` (corpora/prepare_shards.py) writes a shard folder once; training reads it through
``ShardSource``, which opens only the shards of this process's groups and reads records on demand, so a
process's memory does not grow with the corpus.

Layout::

    index.json            the folder's table of contents (written last: a folder without it is unfinished):
                          format, feature size, per split its shards (file, records, bytes, sha256) and, per
                          record, its frames and tokens (what bucketing and batch planning need)
    tokenizer.model       the sentencepiece model the targets were encoded with
    global_stats.json     mean and 1 / stddev of the training features (torchaudio's format)
    train-00000.array_record, ...   array_record files, one msgpack record per utterance: {"id", "text",
                          "features": (T, F) float32 log-mel before normalisation, "targets": (U,) int32}
    train-00000.json      a shard's sidecar: what the shard holds, written after it (``prepare`` resumes by it)

Shards hold features, not audio: on 2 CPU cores the trainer's own step uses both cores, and log-mel
featurisation in the loader would take time from it at every epoch, where preparation pays it once
(BENCHMARKS.md, "Data at scale", has the measurements). Shard i of a split belongs to group i % G; with G
groups (``data.groups``), rows [k B / G, (k + 1) B / G) of every batch come from group k
(``loop.batches.plan_batches``), so a process reads only the shards of the groups its rows hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flax import serialization

from streamformer.features import GlobalStats

from ..config import DataConfig
from . import screen
from .prepare import Example, normalize

__all__ = [
    "FORMAT",
    "BadShardError",
    "ShardSource",
    "SplitIndex",
    "decode_record",
    "encode_record",
    "is_shard_folder",
    "load_index",
    "read_split",
    "sha256_of",
]

logger = logging.getLogger(__name__)

FORMAT = "streamformer-shards/1"
INDEX = "index.json"


class BadShardError(ValueError):
    """A shard is missing, truncated or corrupted (data.strict=true, or a record that cannot be read)."""


def encode_record(id: str, text: str, features: np.ndarray, targets: np.ndarray) -> bytes:
    """One utterance as a record: msgpack (flax.serialization) of its fields."""
    return serialization.msgpack_serialize(
        {
            "id": id,
            "text": text,
            "features": np.ascontiguousarray(features, np.float32),
            "targets": np.ascontiguousarray(targets, np.int32),
        }
    )


def decode_record(data: bytes) -> Example:
    """The record ``encode_record`` wrote (features before normalisation); ValueError when the bytes are not
    one."""
    try:
        blob = serialization.msgpack_restore(data)
        record = Example(
            id=str(blob["id"]),
            text=str(blob["text"]),
            features=np.asarray(blob["features"], np.float32),
            targets=np.asarray(blob["targets"], np.int32),
        )
    except Exception as error:  # msgpack raises many types on garbage
        raise ValueError(f"not a streamformer record ({type(error).__name__}: {error})") from None
    if record.features.ndim != 2 or record.targets.ndim != 1:
        raise ValueError(
            f"record {record.id}: features {record.features.shape}, targets {record.targets.shape}"
        )
    return record


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_shard_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a finished shard folder (it has index.json)."""
    return (Path(path) / INDEX).is_file()


@dataclass(frozen=True)
class SplitIndex:
    """One split of a shard folder.

    shards: per shard {"file", "records", "bytes", "sha256"}.
    shard, position: (N,) the shard of each record and its place in that shard.
    frames, tokens: (N,) feature frames and target tokens of each record.
    """

    folder: Path
    name: str
    shards: list[dict]
    shard: np.ndarray
    position: np.ndarray
    frames: np.ndarray
    tokens: np.ndarray
    report: dict = field(default_factory=dict)

    def path(self, shard: int) -> Path:
        return self.folder / self.shards[shard]["file"]


def load_index(folder: str | os.PathLike) -> dict:
    """index.json of ``folder``, checked to be this format's."""
    folder = Path(folder)
    path = folder / INDEX
    try:
        index = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"shards: {folder} has no {INDEX} (not a shard folder, or `python -m train prepare` did not finish: "
            "run it again to resume)"
        ) from None
    if index.get("format") != FORMAT:
        raise ValueError(f"shards: {path} is format {index.get('format')!r}, expected {FORMAT!r}")
    return index


def split_index(folder: str | os.PathLike, split: str) -> SplitIndex:
    folder = Path(folder)
    index = load_index(folder)
    if split not in index["splits"]:
        raise ValueError(f"shards: {folder} has splits {sorted(index['splits'])}, not {split!r}")
    entry = index["splits"][split]
    shards = entry["shards"]
    counts = [s["records"] for s in shards]
    return SplitIndex(
        folder=folder,
        name=split,
        shards=shards,
        shard=np.repeat(np.arange(len(shards)), counts).astype(np.int64),
        position=np.concatenate([np.arange(n) for n in counts]).astype(np.int64)
        if shards
        else np.zeros(0, int),
        frames=np.asarray([f for s in shards for f in s["frames"]], np.int64),
        tokens=np.asarray([t for s in shards for t in s["tokens"]], np.int64),
        report=entry.get("report", {}),
    )


def _shard_problem(split: SplitIndex, shard: int, open_it: bool) -> str | None:
    """Why shard ``shard`` cannot be read (None when it can): missing, another size, a bad footer."""
    from array_record.python import array_record_module

    path, expected = split.path(shard), split.shards[shard]
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    if size != expected["bytes"]:
        return f"{path}: {size} bytes, expected {expected['bytes']} (truncated or replaced)"
    if open_it:
        try:
            reader = array_record_module.ArrayRecordReader(str(path))
            count = reader.num_records()
            reader.close()
        except Exception as error:  # the C++ reader raises RuntimeError/ValueError on a damaged footer
            return f"{path}: cannot be opened ({error})"
        if count != expected["records"]:
            return f"{path}: {count} records, expected {expected['records']}"
    return None


class ShardSource:
    """The training split of a shard folder as a batch source (see ``loop.loader``): per-record lengths for
    planning, and ``read`` of records by number, from the shards of this process's groups only.

    Every process checks the size of every shard (cheap, and the same verdict everywhere, so all processes plan
    the same batches) and opens the footers of its own. A bad shard is named in one line; with
    ``data.strict`` the run stops before training with the list (BadShardError), otherwise the shard's records
    leave the plan and are counted (``report``). A record that fails to decode during training (a corrupted
    byte the size check cannot see) is skipped: its row of the batch is marked invalid and counted in
    ``skipped`` (with strict, BadShardError names it).
    """

    def __init__(self, folder: str | os.PathLike, split: str, data: DataConfig, stats: GlobalStats):
        self.split = split_index(folder, split)
        self.strict = data.strict
        self.num_groups = data.groups
        self.stats = stats
        self.group = self.split.shard % self.num_groups
        self.lengths, self.target_lengths = self.split.frames, self.split.tokens
        self.skipped = 0
        self.bad_shards: list[str] = []
        self._lock = threading.Lock()
        self._readers: dict[int, object] = {}
        self._usable = np.ones(len(self.lengths), bool)
        self._open: set[int] = set()
        self.feature_dim = int(load_index(folder)["feature_dim"])

    def open(self, groups: set[int]) -> None:
        """Checks every shard's size and the footers of the shards of ``groups`` (this process's), which
        ``read`` may then read."""
        problems = {}
        for shard in range(len(self.split.shards)):
            problem = _shard_problem(self.split, shard, open_it=shard % self.num_groups in groups)
            if problem:
                problems[shard] = problem
        for problem in problems.values():
            logger.warning("bad shard: %s", problem)
        self.bad_shards = list(problems.values())
        if problems and self.strict:
            raise BadShardError(
                f"data.train: {len(problems)} of {len(self.split.shards)} shards are unusable (data.strict=true; "
                "set it to false to skip their records, or run `python -m train prepare` again):\n  "
                + "\n  ".join(problems.values())
            )
        self._usable = ~np.isin(self.split.shard, list(problems))
        self._open = {s for s in range(len(self.split.shards)) if s % self.num_groups in groups} - set(
            problems
        )

    def _reader(self, shard: int):
        """The reader of ``shard`` in this process (opened on first use: a worker process opens its own)."""
        from array_record.python import array_record_module

        with self._lock:
            if shard not in self._readers:
                if shard not in self._open:
                    raise RuntimeError(f"shards: shard {shard} is not one of this process's (open() first)")
                self._readers[shard] = array_record_module.ArrayRecordReader(
                    str(self.split.path(shard)), "readahead_buffer_size:0"
                )
            return self._readers[shard]

    def __getstate__(self) -> dict:  # for grain's worker processes: readers and the lock stay behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_lock")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _readers={}, _lock=threading.Lock())

    @property
    def usable(self) -> np.ndarray:
        """(N,) bool: records whose shard passed ``open``'s checks."""
        return self._usable

    def report(self) -> dict:
        """The metrics record (kind "data") of the shards set aside at the start."""
        screened = self.split.report  # what preparation set aside (unusable audio or transcripts)
        return {
            "kind": "data",
            "split": "train",
            "source": str(self.split.folder),
            "utterances": int(self._usable.sum()),
            "skipped": screened.get("skipped", 0) + int((~self._usable).sum()),
            "skipped_by_reason": screened.get("skipped_by_reason", {}),
            "skipped_files": screened.get("skipped_files", []),
            "bad_shards": self.bad_shards,
            "bad_shard_records": int((~self._usable).sum()),
        }

    def read(self, index: int) -> Example | None:
        """Record ``index`` with normalised features; None (counted in ``skipped``) when it cannot be decoded."""
        shard, position = int(self.split.shard[index]), int(self.split.position[index])
        try:
            record = decode_record(self._reader(shard).read([position])[0])
        except Exception as error:  # a corrupted chunk: riegeli's checksum or msgpack fails
            where = f"{self.split.path(shard)} record {position}"
            if self.strict:
                raise BadShardError(f"data.train: {where} cannot be read: {error}") from None
            with self._lock:
                self.skipped += 1
            logger.warning("skipped unreadable record %s: %s", where, error)
            return None
        return Example(record.id, record.text, normalize(record.features, self.stats), record.targets)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()


def rejected_report(split: str, total: int, rejected: list[dict]) -> dict:
    """The screening report (screen.DataReport.record) from the sidecars' rejected utterances."""
    report = screen.DataReport(split, total, [screen.Rejected(**r) for r in rejected])
    return report.record()


def read_split(folder: str | os.PathLike, split: str, stats: GlobalStats) -> list[Example]:
    """Every record of ``split`` with normalised features: for the dev and test splits, which evaluation holds
    in memory. A bad shard raises BadShardError."""
    from array_record.python import array_record_module

    index = split_index(folder, split)
    problems = [p for p in (_shard_problem(index, s, True) for s in range(len(index.shards))) if p]
    if problems:
        raise BadShardError(f"data.{split}: unusable shards:\n  " + "\n  ".join(problems))
    examples = []
    for shard in range(len(index.shards)):
        reader = array_record_module.ArrayRecordReader(str(index.path(shard)))
        try:
            for data in reader.read_all():
                record = decode_record(data)
                examples.append(
                    Example(record.id, record.text, normalize(record.features, stats), record.targets)
                )
        finally:
            reader.close()
    return examples
