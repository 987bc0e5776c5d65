"""``python -m train prepare``: a corpus into a shard folder (corpora/shards.py), on every core, resumable.

The corpus is what a run's ``data.train`` / ``data.dev`` / ``data.test`` name ("synth", a LibriSpeech-layout
folder such as the espeak corpus, a JSON-lines manifest). Preparation:

1. lists every split and checks the folder was not started from another corpus (``prepare.json``);
2. trains the tokenizer on the training transcripts (or copies ``data.tokenizer``);
3. writes each split's shards of ``shard_size`` utterances in worker processes, one per core: audio read and
   screened as the trainer screens it (undecodable, empty or silent audio, a transcript the tokenizer cannot
   encode: skipped, named and counted; with ``data.strict`` an error listing them), log-mel features,
   tokens. Each shard is written under a temporary name and renamed, then its sidecar (``<shard>.json``) is
   written: a shard with a sidecar is done, so an interrupted preparation resumes where it stopped;
4. sums the training features' statistics from the sidecars into global_stats.json and writes index.json.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np

from streamformer.features import global_stats_from_sums
from streamformer.io import atomic_write_bytes, atomic_write_text
from streamformer.text import Tokenizer, train_bpe

from ..config import Config
from . import screen, shards
from .prepare import SPLITS, load_corpus, normalize_text

__all__ = ["prepare_shards"]

SHARD_SIZE = 1000  # utterances per shard: ~10 MB of features of 10 s utterances


def _settings(config: Config, shard_size: int, items: dict[str, list]) -> dict:
    data = config.data
    digest = {
        split: hashlib.sha256("\n".join(item.id for item in items[split]).encode()).hexdigest()
        for split in items
    }
    return {
        "format": shards.FORMAT,
        "data": {
            k: getattr(data, k) for k in ("train", "dev", "test", "vocab_size", "tokenizer", "global_stats")
        }
        | {"synth_sizes": list(data.synth_sizes), "synth_seed": data.synth_seed},
        "shard_size": shard_size,
        "utterances": {split: len(items[split]) for split in items},
        "ids_sha256": digest,
    }


def _write_shard(job: tuple) -> dict:
    """One shard (in a worker process): screen, featurise and tokenise ``items``, write the array_record file
    under a temporary name and rename it, then the sidecar. Returns the sidecar."""
    from array_record.python import array_record_module

    from .prepare import _usable_features

    split, number, items, out, tokenizer_path, cache = job
    if cache:
        from ..workdir import enable_compilation_cache

        enable_compilation_cache(cache)
    out = Path(out)
    name = f"{split}-{number:05d}"
    report = screen.DataReport(split, len(items))
    usable, features = _usable_features(items, report)
    tokenizer = Tokenizer(tokenizer_path)
    usable, features = screen.encodable(
        usable, features, lambda t: tokenizer.encode(normalize_text(t)), report
    )
    tmp = out / f".tmp-{name}.array_record"
    writer = array_record_module.ArrayRecordWriter(str(tmp), "group_size:1")
    total = np.zeros(features[0].shape[1] if features else 0)
    total_sq, frames, tokens, seconds = total.copy(), [], [], 0.0
    for item, feats in zip(usable, features, strict=True):
        text = normalize_text(item.text)
        targets = np.asarray(tokenizer.encode(text), np.int32)
        writer.write(shards.encode_record(item.id, text, feats, targets))
        total += feats.sum(0, dtype=np.float64)
        total_sq += np.square(feats, dtype=np.float64).sum(0)
        frames.append(int(feats.shape[0]))
        tokens.append(int(targets.size))
        seconds += feats.shape[0] * 0.01  # a frame per 10 ms of audio
    writer.close()
    os.replace(tmp, out / f"{name}.array_record")
    sidecar = {
        "file": f"{name}.array_record",
        "records": len(frames),
        "bytes": (out / f"{name}.array_record").stat().st_size,
        "sha256": shards.sha256_of(out / f"{name}.array_record"),
        "frames": frames,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "sum": total.tolist(),
        "sum_sq": total_sq.tolist(),
        "rejected": [vars(r) for r in report.rejected],
        "listed": len(items),
    }
    atomic_write_text(out / f"{name}.json", json.dumps(sidecar))
    return sidecar


def _pool(workers: int):
    methods = multiprocessing.get_all_start_methods()  # no fork: this process may run JAX's threads
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn").Pool(workers)


def _tokenizer(config: Config, out: Path, train_items: list) -> Path:
    path = out / "tokenizer.model"
    if not path.exists():
        if config.data.tokenizer:
            atomic_write_bytes(path, Path(config.data.tokenizer).read_bytes())
        else:
            train_bpe([normalize_text(item.text) for item in train_items], path, config.data.vocab_size)
    return path


def prepare_shards(
    config: Config,
    out: str | os.PathLike,
    *,
    shard_size: int = SHARD_SIZE,
    workers: int | None = None,
    compilation_cache: str | None = None,
    say=print,
) -> dict:
    """Prepares ``config.data``'s splits into the shard folder ``out`` (see the module docstring); returns
    the index. A finished folder from the same corpus is returned as it is; one begun from another corpus or
    with other settings raises FileExistsError."""
    if shard_size < 1:
        raise ValueError(f"shard_size: expected >= 1, got {shard_size}")
    out = Path(out)
    started = time.perf_counter()
    items = {split: load_corpus(config.data, split) for split in SPLITS}
    for split, listed in items.items():
        if not listed:
            raise ValueError(f"data.{split}: no utterances in {getattr(config.data, split)!r}")
    settings = _settings(config, shard_size, items)
    out.mkdir(parents=True, exist_ok=True)
    stored = out / "prepare.json"
    if stored.exists() and json.loads(stored.read_text()) != settings:
        raise FileExistsError(
            f"out: {out} holds shards prepared from another corpus or with other settings (see {stored}); "
            "choose another folder or remove it"
        )
    if shards.is_shard_folder(out):
        say(f"{out}: already prepared")
        return shards.load_index(out)
    atomic_write_text(stored, json.dumps(settings, indent=1))
    for stale in out.glob(".tmp-*"):
        stale.unlink()
    tokenizer = _tokenizer(config, out, items["train"])

    jobs, done = [], {}
    for split in SPLITS:
        for number, begin in enumerate(range(0, len(items[split]), shard_size)):
            sidecar = out / f"{split}-{number:05d}.json"
            if sidecar.exists():
                done[(split, number)] = json.loads(sidecar.read_text())
            else:
                chunk = items[split][begin : begin + shard_size]
                jobs.append((split, number, chunk, str(out), str(tokenizer), compilation_cache))
    total = len(jobs) + len(done)
    if done:
        say(f"{out}: resuming, {len(done)} of {total} shards already written")
    workers = max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))
    if jobs:
        with _pool(workers) as pool:
            for sidecar_, (split, number, *_) in zip(pool.imap(_write_shard, jobs), jobs, strict=True):
                done[(split, number)] = sidecar_
                say(
                    f"{out}: {len(done)}/{total} shards ({split}-{number:05d}: {sidecar_['records']} utterances)"
                )
    index = _index(config, out, done, time.perf_counter() - started)
    say(f"{out}: prepared in {time.perf_counter() - started:.1f} s")
    return index


def _index(config: Config, out: Path, done: dict, seconds: float) -> dict:
    splits = {}
    rejected_all = []
    for split in SPLITS:
        sidecars = [done[key] for key in sorted(k for k in done if k[0] == split)]
        rejected = [r for s in sidecars for r in s["rejected"]]
        rejected_all += rejected
        report = shards.rejected_report(split, sum(s["listed"] for s in sidecars), rejected)
        splits[split] = {
            "shards": [
                {k: s[k] for k in ("file", "records", "bytes", "sha256", "frames", "tokens")}
                for s in sidecars
            ],  # fmt: skip
            "utterances": sum(s["records"] for s in sidecars),
            "hours": round(sum(s["seconds"] for s in sidecars) / 3600, 3),
            "bytes": sum(s["bytes"] for s in sidecars),
            "report": report,
        }
        if report["skipped"]:
            screen.finish(
                screen.DataReport(split, report["utterances"] + report["skipped"],
                                  [screen.Rejected(**r) for r in rejected]),
                config.data.strict,
            )  # fmt: skip
    train = [done[k] for k in done if k[0] == "train"]
    if config.data.global_stats:
        atomic_write_bytes(out / "global_stats.json", Path(config.data.global_stats).read_bytes())
    else:
        stats = global_stats_from_sums(
            np.sum([s["sum"] for s in train], 0),
            np.sum([s["sum_sq"] for s in train], 0),
            sum(sum(s["frames"]) for s in train),
        )
        stats.save(out / "global_stats.json")
    feature_dim = len(train[0]["sum"])
    index = {
        "format": shards.FORMAT,
        "feature_dim": feature_dim,
        "sample_rate": 16000,
        "vocab_size": Tokenizer(out / "tokenizer.model").num_symbols - 1,
        "tokenizer": "tokenizer.model",
        "global_stats": "global_stats.json",
        "prepare_seconds": round(seconds, 1),
        "splits": splits,
    }
    atomic_write_text(out / shards.INDEX, json.dumps(index))
    return index
