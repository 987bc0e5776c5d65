"""Shard folders (``python -m train prepare``) and the input pipeline that reads them (train/loop/loader.py):
every field round-trips, groups of shards split the work between processes, the iterator resumes exactly,
preparation resumes, and bad shards are named, skipped and counted (or stop the run with data.strict)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamformer.train import config as config_lib
from streamformer.train.__main__ import main as cli
from streamformer.train.corpora import prepare, shards
from streamformer.train.corpora.prepare_shards import prepare_shards
from streamformer.train.loop.loader import (
    MemorySource,
    TrainBatches,
    batch_iterator,
    bucket_frames_for,
    state_for_checkpoint,
)
from tests.conftest import shard_args
from tests.test_train import FIT, micro_config, step_losses


def shard_config(folder: Path, *extra: str) -> config_lib.Config:
    return micro_config(*[f"data.{split}={folder}" for split in ("train", "dev", "test")], *extra)


def source_of(folder: Path, config: config_lib.Config) -> shards.ShardSource:
    index = shards.load_index(folder)
    from streamformer.features import GlobalStats

    return shards.ShardSource(folder, "train", config.data, GlobalStats.load(folder / index["global_stats"]))


def batches_of(source, config, rows=None) -> TrainBatches:
    buckets = bucket_frames_for(config, np.asarray(source.lengths)[source.usable])
    return TrainBatches(source, config, buckets, right_pad=16, rows=rows)


def test_every_field_round_trips_against_the_in_memory_preparation(micro_shards, tmp_path):
    config = micro_config()
    index = shards.load_index(micro_shards)
    assert index["format"] == shards.FORMAT and index["feature_dim"] == 80
    assert [len(index["splits"][s]["shards"]) for s in ("train", "dev", "test")] == [4, 1, 1]
    stats = prepare.global_stats_for(shard_config(micro_shards), tmp_path, None)  # copied from the folder
    memory, tokenizer, memory_stats = prepare.prepare_split(config, tmp_path / "memory", "train")
    np.testing.assert_allclose(stats.mean, memory_stats.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(stats.invstddev, memory_stats.invstddev, rtol=1e-5)
    from_shards = shards.read_split(micro_shards, "train", memory_stats)
    assert [e.id for e in from_shards] == [e.id for e in memory]  # in the corpus's order, shard after shard
    for a, b in zip(from_shards, memory, strict=True):
        assert a.text == b.text
        np.testing.assert_array_equal(a.targets, b.targets)
        assert a.features.dtype == np.float32 and a.targets.dtype == np.int32
        np.testing.assert_allclose(a.features, b.features, atol=1e-5)
    train = shards.split_index(micro_shards, "train")
    assert train.frames.tolist() == [e.features.shape[0] for e in memory]
    assert train.tokens.tolist() == [e.targets.size for e in memory]
    for shard in train.shards:
        assert shard["sha256"] == shards.sha256_of(micro_shards / shard["file"])
    assert (
        Path(micro_shards / "tokenizer.model").read_bytes()
        == (tmp_path / "memory" / "tokenizer.model").read_bytes()
    )


def test_each_process_reads_only_its_groups_shards_and_together_they_build_the_batch(micro_shards):
    config = shard_config(micro_shards, "data.groups=2")
    whole = batches_of(source_of(micro_shards, config), config)
    halves = [
        batches_of(source_of(micro_shards, config), config, rows=slice(k * 4, k * 4 + 4)) for k in (0, 1)
    ]
    index = shards.split_index(micro_shards, "train")
    shard_of = {}
    for shard in range(len(index.shards)):
        from array_record.python import array_record_module

        reader = array_record_module.ArrayRecordReader(str(index.path(shard)))
        shard_of.update({shards.decode_record(r).id: shard for r in reader.read_all()})
        reader.close()
    assert [sorted(h.source._open) for h in halves] == [[0, 2], [1, 3]]  # disjoint, covering the corpus
    seen = []
    for step in range(2 * whole.per_epoch):
        batch, parts = whole.batch(step), [h.batch(step) for h in halves]
        assert batch.ids == parts[0].ids + parts[1].ids
        np.testing.assert_array_equal(batch.features, np.concatenate([p.features for p in parts]))
        for k, part in enumerate(parts):
            assert {shard_of[i] % 2 for i in part.ids} == {k}
        seen += batch.ids
    assert set(seen) == set(shard_of)  # two epochs use every utterance
    with pytest.raises(ValueError, match="data.groups: each process must hold whole groups"):
        batches_of(source_of(micro_shards, config), config, rows=slice(2, 6))


@pytest.mark.parametrize("kind", ["memory", "shards", "shards in a worker process"])
def test_the_iterator_resumes_at_the_batch_it_stopped_before(micro_shards, tmp_path, kind):
    config = shard_config(micro_shards)
    if kind == "memory":
        examples, _, _ = prepare.prepare_split(micro_config(), tmp_path, "train")
        source = MemorySource(examples)
    else:
        source = source_of(micro_shards, config)
    batches = batches_of(source, config)
    workers = int(kind.endswith("process"))
    straight = batch_iterator(batches, 20)
    expected = [next(straight) for _ in range(20)]
    stopped = batch_iterator(batches, 20, workers=workers)
    for _ in range(9):  # mid-epoch: an epoch is 6 batches
        next(stopped)
    state = json.loads(json.dumps(state_for_checkpoint(stopped, 9, workers)))  # as the checkpoint stores it
    resumed = batch_iterator(batches, 20, 9, workers=workers, state=state)
    for (step, batch), (want_step, want) in zip(resumed, expected[9:], strict=True):
        assert step == want_step and batch.ids == want.ids
        np.testing.assert_array_equal(batch.features, want.features)
    with pytest.raises(ValueError, match="the checkpoint's iterator is at step 9, its train state at step 8"):
        batch_iterator(batches, 20, 8, workers=workers, state=state)
    if workers:
        with pytest.raises(
            ValueError, match="data.loader_workers: the checkpoint of step 9 holds no iterator"
        ):
            batch_iterator(batches, 20, 9, workers=2, state=state)


def test_preparation_resumes_and_refuses_another_corpus(micro_shards, tmp_path, cache):
    copy = tmp_path / "shards"
    shutil.copytree(micro_shards, copy)
    index = json.loads((copy / "index.json").read_text())
    # an interruption: index not written, the last training shard never finished, a temporary file left
    for name in ("index.json", "train-00003.array_record", "train-00003.json"):
        (copy / name).unlink()
    (copy / ".tmp-train-00003.array_record").write_bytes(b"half")
    lines = []
    again = prepare_shards(micro_config(), copy, shard_size=12, workers=1, compilation_cache=str(cache),
                           say=lines.append)  # fmt: skip
    assert any("resuming, 5 of 6 shards already written" in line for line in lines)
    assert again["splits"] == index["splits"] and not list(copy.glob(".tmp-*"))
    with pytest.raises(FileExistsError, match="holds shards prepared from another corpus"):
        prepare_shards(micro_config("data.synth_sizes=40,8,8"), copy, shard_size=12)


def test_a_truncated_shard_is_named_and_stops_a_strict_run_or_leaves_the_plan(micro_shards, tmp_path, capsys):
    copy = tmp_path / "shards"
    shutil.copytree(micro_shards, copy)
    victim = copy / "train-00001.array_record"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    strict = [
        "fit",
        "--workdir",
        str(tmp_path / "strict"),
        *FIT,
        *shard_args(copy),
        "--set",
        "data.strict=true",
    ]
    assert cli(strict) == 2
    error = capsys.readouterr().err
    assert "1 of 4 shards are unusable" in error and f"{victim}: " in error and "truncated" in error
    assert not (tmp_path / "strict" / "checkpoints").exists()  # stopped before training

    source = source_of(copy, shard_config(copy))
    batches = batches_of(source, shard_config(copy))
    assert source.bad_shards == [f"{victim}: {victim.stat().st_size} bytes, expected "
                                 f"{2 * victim.stat().st_size} (truncated or replaced)"]  # fmt: skip
    assert source.report()["bad_shard_records"] == 12 and batches.usable.size == 36
    plan = np.concatenate(batches.plan(0))
    assert not np.any(source.split.shard[plan] == 1)


def test_a_corrupted_record_is_skipped_and_counted_or_named_with_strict(micro_shards, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(micro_shards, copy)
    victim = copy / "train-00002.array_record"
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x55  # the size is unchanged: only reading the record finds it
    victim.write_bytes(bytes(data))

    workdir = tmp_path / "run"
    args = ["fit", "--workdir", str(workdir), *FIT, *shard_args(copy), "--no-eval", "--set", "loop.steps=12"]
    assert cli(args) == 0
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    unreadable = [r["unreadable_records"] for r in records if r["kind"] == "train"]
    assert unreadable[-1] >= 1  # two epochs read every record once at least
    assert len(step_losses(workdir)) == 12

    config = shard_config(copy, "data.strict=true")
    batches = batches_of(source_of(copy, config), config)
    with pytest.raises(shards.BadShardError, match=rf"{victim} record \d+ cannot be read"):
        for step in range(2 * batches.per_epoch):
            batches.batch(step)
