"""Batching examples into a few static shapes for jit: length buckets, per-epoch plans that are a pure
function of (seed, epoch), padded batches, and SpecAugment.

``plan_batches`` groups examples of similar length into buckets (and, with sharded data, rows by group of
shards) and ``pad_batch`` pads a batch to its bucket's shape, so a jitted train step compiles once per bucket.
``batches`` is one epoch of in-memory examples (evaluation); the trainer's stream, whose batch at step s
depends on (seed, s) only, is ``loop.loader``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..corpora.prepare import Example

__all__ = [
    "Batch",
    "batches",
    "device_batch",
    "make_buckets",
    "pad_batch",
    "plan_batches",
    "spec_augment",
]


@dataclass(frozen=True)
class Batch:
    """A padded batch of static shape (one shape per bucket).

    features: (B, T + P, F) float32; row b holds its feature_lengths[b] valid frames first, then zeros (or
        pad_value). T is the bucket's frame count and P = right_pad_frames, so every sequence, even the
        longest of its bucket, is followed by at least P padding frames: the right context of its last
        segment.
    feature_lengths: (B,) int32, valid frames per row (the P padding frames not counted).
    targets: (B, U) int32 token ids, padded with target_pad_id after target_lengths[b].
    target_lengths: (B,) int32.
    valid: (B,) bool; False for the rows that fill a short final batch (copies of the batch's first example:
        weight them out of the loss).
    ids: the example ids, "" for fill rows.
    unreadable: how many rows held a record that could not be read (also valid=False).
    """

    features: np.ndarray
    feature_lengths: np.ndarray
    targets: np.ndarray
    target_lengths: np.ndarray
    valid: np.ndarray
    ids: tuple[str, ...]
    unreadable: int = 0  # rows whose record could not be read (corrupted shard bytes), marked invalid


def _round_up(value: int, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def make_buckets(
    lengths: Sequence[int] | np.ndarray,
    num_buckets: int,
    frame_multiple: int = 1,
    *,
    method: str = "quantiles",
    min_count: int = 1,
) -> list[int]:
    """Bucket sizes (frames): at most ``num_buckets`` static batch shapes, each a multiple of ``frame_multiple``
    (e.g. segment_length * time_reduction_stride, so each bucket is a whole number of segments); the last size
    covers the longest example.

    method "quantiles": the length quantiles k / num_buckets (k = 1..num_buckets) rounded up, duplicates merged:
    buckets about equally full. "padding": the sizes that minimise the padded frames of the whole set (a dynamic
    programme over the rounded lengths), each bucket holding at least ``min_count`` examples (e.g. the batch
    size, so no bucket is too small to fill a batch) where the lengths allow it. With a long tail of lengths the
    quantiles stretch the last bucket to the longest example; "padding" gives it few examples instead.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0:
        raise ValueError(f"lengths: expected a non-empty 1-D sequence, got shape {lengths.shape}")
    if num_buckets < 1:
        raise ValueError(f"num_buckets: expected >= 1, got {num_buckets}")
    if frame_multiple < 1:
        raise ValueError(f"frame_multiple: expected >= 1, got {frame_multiple}")
    if method == "padding":
        return _least_padding_buckets(lengths, num_buckets, frame_multiple, min_count)
    if method != "quantiles":
        raise ValueError(f"bucketing: expected 'quantiles' or 'padding', got {method!r}")
    quantiles = np.quantile(lengths, np.arange(1, num_buckets + 1) / num_buckets, method="higher")
    sizes = sorted({_round_up(max(q, 1), frame_multiple) for q in quantiles})
    sizes[-1] = max(sizes[-1], _round_up(max(lengths.max(), 1), frame_multiple))
    return sizes


def _least_padding_buckets(
    lengths: np.ndarray, num_buckets: int, frame_multiple: int, min_count: int
) -> list[int]:
    rounded = -(-np.maximum(lengths, 1) // frame_multiple) * frame_multiple  # _round_up of every length
    sizes, counts = np.unique(rounded, return_counts=True)
    before = np.concatenate([[0], np.cumsum(counts)])  # examples with a size below sizes[i]: before[i]
    n, inf = len(sizes), float("inf")
    # cost[k][i]: least padded frames of the examples of sizes[:i] in k buckets, the last ending at sizes[i - 1]
    cost = np.full((num_buckets + 1, n + 1), inf)
    cost[0][0] = 0.0
    back = np.zeros((num_buckets + 1, n + 1), dtype=int)
    for k in range(1, num_buckets + 1):
        for i in range(1, n + 1):  # the previous bucket ends at sizes[j - 1], j < i
            held = before[i] - before[:i]
            total = np.where(held >= min_count, cost[k - 1][:i] + held * float(sizes[i - 1]), inf)
            back[k][i] = int(np.argmin(total))
            cost[k][i] = total[back[k][i]]
    k = int(np.argmin(cost[:, n]))
    if cost[k][n] == inf:  # fewer examples than min_count: one bucket covers all
        return [int(sizes[-1])]
    result, i = [], n
    while i > 0:
        result.append(int(sizes[i - 1]))
        i, k = int(back[k][i]), k - 1
    return result[::-1]


def _bucket_index(lengths: np.ndarray, bucket_frames: Sequence[int]) -> np.ndarray:
    bounds = np.asarray(bucket_frames)
    if bounds.ndim != 1 or bounds.size == 0 or np.any(np.diff(bounds) <= 0):
        raise ValueError(f"bucket_frames: expected strictly increasing sizes, got {list(bucket_frames)}")
    index = np.searchsorted(bounds, lengths, side="left")
    too_long = index == bounds.size
    if np.any(too_long):
        raise ValueError(
            f"bucket_frames: {int(too_long.sum())} example(s) are longer than the largest bucket "
            f"({int(bounds[-1])} frames; longest {int(lengths.max())}): add a larger bucket or filter them"
        )
    return index


def plan_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    bucket_frames: Sequence[int],
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    groups: Sequence[int] | np.ndarray | None = None,
    num_groups: int = 1,
) -> list[np.ndarray]:
    """The batches of one epoch as arrays of example indices, each within one bucket.

    With shuffle, examples are shuffled within buckets and batches across buckets by a generator seeded with
    (seed, epoch): the order is a pure function of its arguments, so a resumed run sees the same data. Without
    shuffle, batches come bucket by bucket in index order. drop_last drops each bucket's short final batch.

    groups: the group (0 .. num_groups - 1) of each example (with sharded data: of its shard). Rows
    [k * B / num_groups, (k + 1) * B / num_groups) of every batch then come from group k only, so a process
    that builds only some rows reads only its groups' shards. A bucket gives as many batches as its smallest
    group fills (the rest of each group's members wait for another epoch's shuffle). With one group this is
    the plain plan.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
    if num_groups < 1 or batch_size % num_groups:
        raise ValueError(f"num_groups: expected a divisor of batch_size {batch_size}, got {num_groups}")
    if num_groups > 1 and not drop_last:
        raise ValueError("drop_last: expected True with num_groups > 1 (groups fill whole batches only)")
    lengths = np.asarray(lengths)
    groups = np.zeros(lengths.shape, np.int64) if groups is None else np.asarray(groups)
    if groups.shape != lengths.shape or (groups.size and not 0 <= groups.min() <= groups.max() < num_groups):
        raise ValueError(
            f"groups: expected one group in [0, {num_groups}) per example ({lengths.shape}), got "
            f"shape {groups.shape}"
        )
    bucket = _bucket_index(lengths, bucket_frames)
    rng = np.random.default_rng([seed, epoch])
    rows = batch_size // num_groups
    plan: list[np.ndarray] = []
    for b in range(len(bucket_frames)):
        members = []
        for k in range(num_groups):
            mine = np.flatnonzero((bucket == b) & (groups == k))
            members.append(rng.permutation(mine) if shuffle else mine)
        count = min(m.size for m in members) // rows if num_groups > 1 else -(-members[0].size // rows)
        for j in range(count):
            chunk = np.concatenate([m[j * rows : (j + 1) * rows] for m in members])
            if chunk.size == batch_size or not drop_last:
                plan.append(chunk)
    if shuffle:
        plan = [plan[i] for i in rng.permutation(len(plan))]
    return plan


def pad_batch(
    records: Sequence,
    frames: int,
    target_frames: int,
    num_features: int,
    *,
    batch_size: int | None = None,
    pad_value: float = 0.0,
    target_pad_id: int = 0,
) -> Batch:
    """A Batch of shape (batch_size, frames, F) / (batch_size, target_frames) from ``records`` (objects with
    id, features (T, F), targets (U,)); rows past len(records), and the rows of records that are None (they
    could not be read), are copies of the first readable record marked valid=False (id "")."""
    batch_size = batch_size or len(records)
    readable = [r for r in records if r is not None]
    fill = readable[0] if readable else None
    features = np.full((batch_size, frames, num_features), pad_value, np.float32)
    targets = np.full((batch_size, target_frames), target_pad_id, np.int32)
    lengths, target_lengths = np.ones(batch_size, np.int32), np.ones(batch_size, np.int32)
    valid, ids = np.zeros(batch_size, bool), [""] * batch_size
    for row in range(batch_size):
        record = records[row] if row < len(records) else None
        valid[row], ids[row] = record is not None, record.id if record is not None else ""
        record = record if record is not None else fill
        if record is None:
            continue
        n, u = record.features.shape[0], record.targets.size
        features[row, :n] = record.features
        targets[row, :u] = record.targets
        lengths[row], target_lengths[row] = n, u
    return Batch(features, lengths, targets, target_lengths, valid, tuple(ids),
                 unreadable=sum(r is None for r in records))  # fmt: skip


def batches(
    examples: Sequence[Example],
    batch_size: int,
    bucket_frames: Sequence[int],
    *,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    right_pad_frames: int = 0,
    target_multiple: int = 8,
    pad_value: float = 0.0,
    target_pad_id: int = 0,
    start: int = 0,
) -> Iterator[Batch]:
    """Padded batches of one epoch of in-memory examples (see ``plan_batches`` for the order), from batch
    number ``start`` on (the trainer's batches come from ``loop.loader``, the same planning and padding).

    Shapes: features (B, bucket + right_pad_frames, F) and targets (B, U_bucket), where U_bucket is the
    longest target among all examples of that bucket rounded up to target_multiple; so there is exactly one
    shape per bucket and a jitted step compiles len(bucket_frames) times at most. A short final batch
    (drop_last=False) is filled to batch_size with copies of its first example marked valid=False.

    right_pad_frames: frames of pad_value after each row's valid frames and beyond the bucket (the right
        context R of the last segment, in input frames: R * time_reduction_stride for an Emformer RNN-T).
        streamformer's Emformer takes the features as (B, T + R, D) with lengths = valid frames (after time
        reduction: feature_lengths // stride); torchaudio's counts the right context in its lengths.
    """
    if right_pad_frames < 0:
        raise ValueError(f"right_pad_frames: expected >= 0, got {right_pad_frames}")
    if target_multiple < 1:
        raise ValueError(f"target_multiple: expected >= 1, got {target_multiple}")
    if not examples:
        raise ValueError("examples: expected at least one example, got none")
    lengths = np.array([e.features.shape[0] for e in examples])
    dims = {e.features.shape[1] for e in examples}
    if len(dims) != 1:
        raise ValueError(f"examples: expected one feature size F, got {sorted(dims)}")
    (num_features,) = dims
    bucket = _bucket_index(lengths, bucket_frames)
    bucket_targets = np.zeros(len(bucket_frames), dtype=int)
    np.maximum.at(bucket_targets, bucket, [e.targets.size for e in examples])
    bucket_targets = [_round_up(max(u, 1), target_multiple) for u in bucket_targets]
    plan = plan_batches(
        lengths, batch_size, bucket_frames, seed=seed, epoch=epoch, shuffle=shuffle, drop_last=drop_last
    )
    for indices in plan[start:]:
        b = int(bucket[indices[0]])
        yield pad_batch(
            [examples[i] for i in indices],
            bucket_frames[b] + right_pad_frames,
            bucket_targets[b],
            num_features,
            batch_size=batch_size,
            pad_value=pad_value,
            target_pad_id=target_pad_id,
        )


# ----------------------------------------------------------------------------------------------------
# SpecAugment.


def spec_augment(
    rng: jax.Array,
    features: jax.Array,
    lengths: jax.Array,
    *,
    num_freq_masks: int = 2,
    freq_mask_width: int = 27,
    num_time_masks: int = 2,
    time_mask_width: int = 40,
    max_time_mask_fraction: float = 1.0,
    mask_value: float = 0.0,
) -> jax.Array:
    """SpecAugment's frequency and time masking of valid frames (jit-able; counts and widths are static).

    Each frequency mask sets a band of w ~ U{0..freq_mask_width} channels to mask_value over the valid frames;
    each time mask sets w ~ U{0..min(time_mask_width, max_time_mask_fraction * length)} valid frames (as
    torchaudio's TimeMasking with p). Frames at and after lengths[b] (padding, right context) are untouched.

    Args:
        rng: a PRNG key.
        features: (B, T, F).
        lengths: (B,) valid frames per row.
    Returns:
        (B, T, F), the masked features.
    """
    if features.ndim != 3:
        raise ValueError(f"features: expected shape (B, T, F), got {features.shape}")
    batch, time, channels = features.shape
    if lengths.shape != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), got {lengths.shape}")
    for name, value in (
        ("num_freq_masks", num_freq_masks),
        ("freq_mask_width", freq_mask_width),
        ("num_time_masks", num_time_masks),
        ("time_mask_width", time_mask_width),
    ):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if not 0.0 <= max_time_mask_fraction <= 1.0:
        raise ValueError(f"max_time_mask_fraction: expected in [0, 1], got {max_time_mask_fraction}")
    freq_width_key, freq_start_key, time_width_key, time_start_key = jax.random.split(rng, 4)
    lengths = lengths.astype(jnp.int32)

    def spans(width_key, start_key, count, max_width, extent):
        # extent: (B, 1) room for the masks; widths ~ U{0..max_width}, starts ~ U{0..extent - width}.
        width = jnp.floor(jax.random.uniform(width_key, (batch, count)) * (max_width + 1)).astype(jnp.int32)
        width = jnp.minimum(width, extent)
        begin = jnp.floor(jax.random.uniform(start_key, (batch, count)) * (extent - width + 1)).astype(
            jnp.int32
        )
        return begin, begin + width

    channel = jnp.arange(channels)
    f_begin, f_end = spans(
        freq_width_key, freq_start_key, num_freq_masks, freq_mask_width, jnp.full((batch, 1), channels)
    )
    freq_mask = jnp.any(
        (channel[None, None] >= f_begin[..., None]) & (channel[None, None] < f_end[..., None]), axis=1
    )

    frame = jnp.arange(time)
    max_time = jnp.minimum(time_mask_width, jnp.floor(max_time_mask_fraction * lengths).astype(jnp.int32))[
        :, None
    ]
    t_begin, t_end = spans(time_width_key, time_start_key, num_time_masks, max_time, lengths[:, None])
    time_mask = jnp.any(
        (frame[None, None] >= t_begin[..., None]) & (frame[None, None] < t_end[..., None]), axis=1
    )

    valid = frame[None, :] < lengths[:, None]
    masked = (freq_mask[:, None, :] | time_mask[:, :, None]) & valid[:, :, None]
    return jnp.where(masked, jnp.asarray(mask_value, features.dtype), features)


def device_batch(batch: Batch) -> dict[str, np.ndarray]:
    return {
        "features": batch.features,
        "feature_lengths": batch.feature_lengths,
        "targets": batch.targets,
        "target_lengths": batch.target_lengths,
        "valid": batch.valid,
    }
