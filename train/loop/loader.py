"""The trainer's input pipeline: the batch of every step, from memory or from shards, prefetched by grain.

A *source* holds the training utterances: ``MemorySource`` (examples in memory: the embedded synthetic data, a
small corpus) or ``corpora.shards.ShardSource`` (a shard folder on disk, read on demand). Both give per-record
lengths for planning and ``read(i)``; everything else is one code path:

- ``TrainBatches`` plans every epoch (``batches.plan_batches``: length buckets, shuffled by (seed, epoch), each
  group of shards filling its rows) and builds the batch of step s, a pure function of (seed, s): epoch
  s // batches_per_epoch, position s % batches_per_epoch. A process builds only its rows.
- ``batch_iterator`` runs ``TrainBatches.batch`` over the steps in grain (``MapDataset.range(steps).map``),
  with reader threads (``data.loader_threads``) and optional worker processes (``data.loader_workers``)
  filling a prefetch buffer ahead of the step. Its state (grain's iterator state: the next step) is saved in
  every checkpoint (``state_for_checkpoint``) and set back on resume, so a resumed run sees exactly the batches
  it would have seen.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np

from ..config import Config
from ..corpora.prepare import Example
from .batches import Batch, make_buckets, pad_batch, plan_batches

__all__ = ["MemorySource", "TrainBatches", "batch_iterator", "bucket_frames_for", "state_for_checkpoint"]


class MemorySource:
    """Examples in memory as a batch source (normalised features, as ``corpora.prepare`` makes them)."""

    def __init__(self, examples: Sequence[Example], num_groups: int = 1):
        if not examples:
            raise ValueError("examples: expected at least one example, got none")
        dims = {e.features.shape[1] for e in examples}
        if len(dims) != 1:
            raise ValueError(f"examples: expected one feature size F, got {sorted(dims)}")
        (self.feature_dim,) = dims
        self.examples = examples
        self.lengths = np.array([e.features.shape[0] for e in examples])
        self.target_lengths = np.array([e.targets.size for e in examples])
        self.group = np.arange(len(examples)) % num_groups
        self.usable = np.ones(len(examples), bool)
        self.skipped = 0

    def open(self, groups: set[int]) -> None:
        pass

    def read(self, index: int) -> Example:
        return self.examples[index]

    def close(self) -> None:
        pass


def bucket_frames_for(config: Config, lengths: Sequence[int] | np.ndarray) -> list[int]:
    """Bucket sizes as whole numbers of segments, so each bucket is one compiled shape of whole segments, chosen
    as ``data.bucketing`` says."""
    data = config.data
    return make_buckets(
        lengths,
        data.num_buckets,
        config.model.segment_length,
        method=data.bucketing,
        min_count=data.batch_size,
    )


class TrainBatches:
    """The training batch of every step (this process's rows of it), planned over ``source``.

    Args:
        source: MemorySource or ShardSource (opened here for the groups of ``rows``).
        config: data.batch_size / data.groups / loop.seed set the plan.
        bucket_frames: the bucket sizes (``bucket_frames_for``).
        right_pad: frames of padding after every row (the last segment's right context).
        rows: the rows of the global batch this process builds (``Mesh1D.local_rows``); all by default.
    """

    def __init__(
        self,
        source,
        config: Config,
        bucket_frames: list[int],
        right_pad: int,
        *,
        pad_id: int = 0,
        rows: slice | None = None,
    ):
        data = config.data
        self.source, self.bucket_frames, self.right_pad, self.pad_id = (
            source,
            bucket_frames,
            right_pad,
            pad_id,
        )
        self.batch_size, self.seed, self.num_groups = data.batch_size, config.loop.seed, data.groups
        if self.batch_size % self.num_groups:
            raise ValueError(
                f"data.groups: expected a divisor of data.batch_size {self.batch_size}, got {self.num_groups}"
            )
        self.rows = rows if rows is not None else slice(0, self.batch_size)
        per_group = self.batch_size // self.num_groups
        if self.rows.start % per_group or self.rows.stop % per_group:
            raise ValueError(
                f"data.groups: each process must hold whole groups of rows ({per_group} rows per group with "
                f"batch {self.batch_size} and {self.num_groups} groups), but this one holds rows "
                f"[{self.rows.start}, {self.rows.stop}): make data.groups a multiple of the number of processes"
            )
        source.open(set(range(self.rows.start // per_group, self.rows.stop // per_group)))
        usable = np.flatnonzero(source.usable)
        if usable.size == 0:
            raise ValueError("data.train: no usable utterance (every shard is bad)")
        self.usable = usable
        self.lengths = np.asarray(source.lengths)[usable]
        self.groups = np.asarray(source.group)[usable]
        bucket = np.searchsorted(np.asarray(bucket_frames), self.lengths, side="left")
        if np.any(bucket == len(bucket_frames)):
            raise ValueError(f"bucket_frames: the longest utterance has {self.lengths.max()} frames, more than "
                             f"the largest bucket {bucket_frames[-1]}")  # fmt: skip
        targets = np.zeros(len(bucket_frames), int)
        np.maximum.at(targets, bucket, np.asarray(source.target_lengths)[usable])
        self.bucket_targets = [-(-max(int(u), 1) // 8) * 8 for u in targets]
        self.per_epoch = len(self._plan(0))
        if self.per_epoch == 0:
            raise ValueError(
                f"data.batch_size: {self.batch_size} is more than any bucket holds "
                f"({usable.size} training utterances in {len(bucket_frames)} buckets, {self.num_groups} groups)"
            )
        self._plans: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # for grain's worker processes: the lock and the cached plans stay behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_plans")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock(), _plans={})

    def _plan(self, epoch: int) -> list[np.ndarray]:
        return plan_batches(
            self.lengths, self.batch_size, self.bucket_frames, seed=self.seed, epoch=epoch,
            groups=self.groups, num_groups=self.num_groups,
        )  # fmt: skip

    def plan(self, epoch: int) -> list[np.ndarray]:
        """The batches of ``epoch`` as arrays of record numbers (of the source), cached for two epochs."""
        with self._lock:
            if epoch not in self._plans:
                self._plans = {e: p for e, p in self._plans.items() if e >= epoch - 1}
                self._plans[epoch] = [self.usable[batch] for batch in self._plan(epoch)]
            return self._plans[epoch]

    def batch(self, step: int) -> Batch:
        """This process's rows of the batch of ``step``."""
        epoch, position = divmod(int(step), self.per_epoch)
        indices = self.plan(epoch)[position]
        bucket = int(np.searchsorted(self.bucket_frames, self.source.lengths[indices[0]], side="left"))
        records = [self.source.read(int(i)) for i in indices[self.rows]]
        return pad_batch(
            records,
            self.bucket_frames[bucket] + self.right_pad,
            self.bucket_targets[bucket],
            self.source.feature_dim,
            target_pad_id=self.pad_id,
        )


def batch_iterator(
    batches: TrainBatches,
    steps: int,
    start: int = 0,
    *,
    threads: int = 2,
    workers: int = 0,
    prefetch: int = 4,
    state: dict | None = None,
) -> Iterator[tuple[int, Batch]]:
    """(step, batch) for steps ``start`` .. ``steps - 1``, built ahead by grain.

    threads: grain's reader threads in this process; workers: grain worker processes (0: none; each builds
    whole batches); prefetch: batches built ahead. ``state``: what ``state_for_checkpoint`` saved with the
    checkpoint of step ``start``: grain's iterator state is set back from it (with workers, it must have been
    saved with the same number of workers; without, the position alone suffices).
    """
    import grain

    if state is not None and int(state.get("step", -1)) != start:
        raise ValueError(
            f"data state: the checkpoint's iterator is at step {state.get('step')}, its train state at step {start}"
        )
    dataset = grain.MapDataset.range(steps).map(lambda step: (step, batches.batch(step)))
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    if workers:
        from absl import flags

        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; nothing here sets any
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    iterator = iter(iterable)
    if state is not None and state.get("workers", 0) == workers and "grain" in state:
        iterator.set_state(state["grain"])
    elif start and not workers:
        iterator.set_state({"next_index": int(start)})
    elif start:
        raise ValueError(
            f"data.loader_workers: the checkpoint of step {start} holds no iterator state written with "
            f"{workers} worker(s) (it was written with {None if state is None else state.get('workers')}); "
            "resume with the setting it was written with"
        )
    return iterator


def state_for_checkpoint(iterator, step: int, workers: int) -> dict:
    """What a checkpoint of ``step`` stores of the input pipeline: the step, the number of workers and grain's
    iterator state (JSON)."""
    return {"step": int(step), "workers": int(workers), "grain": iterator.get_state()}
