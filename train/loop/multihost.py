"""Several processes (jax.distributed): their set-up (``initialize``) and what evaluation needs beyond the
training step (``evaluation.evaluate`` uses it).

Training shards each batch over the devices of every process (``mesh.Mesh1D``); evaluation decodes with
per-process programs instead (beam and streaming search are sequential): each process decodes its share of
the utterances (every n-th one) with its own copy of the parameters, and the transcripts are gathered with
``multihost_utils.process_allgather``, so every process reports the error rates of the whole split, the same
as one process would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = ["gather_strings", "initialize", "local_copy", "share"]


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins a jax.distributed run when a coordinator or a process count is given, or STREAMFORMER_DISTRIBUTED
    is set (then jax finds them in the cluster's environment); before any other JAX call. Else nothing."""
    if coordinator_address or num_processes or os.environ.get("STREAMFORMER_DISTRIBUTED"):
        jax.distributed.initialize(
            coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
        )


def local_copy(tree: Any) -> Any:
    """``tree`` with every replicated array that spans other processes' devices replaced by this process's
    copy (on one local device), for computations that each process runs on its own."""

    def local(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if not x.is_fully_replicated:
                raise ValueError(f"tree: expected replicated arrays, got one sharded as {x.sharding}")
            return x.addressable_data(0)
        return x

    return jax.tree.map(local, tree)


def share(items: Sequence, index: int | None = None, count: int | None = None) -> list:
    """Process ``index``'s share of ``items`` (default: this process's): items index, index + count, ..."""
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    return list(items[index::count])


def gather_strings(strings: Sequence[str]) -> list[list[str]]:
    """Every process's ``strings`` (one list per process, by process index), through process_allgather."""
    from jax.experimental import multihost_utils

    blob = np.frombuffer(json.dumps(list(strings)).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.array([blob.size], np.int64))
    padded = np.zeros(int(np.max(sizes)), np.uint8)
    padded[: blob.size] = blob
    gathered = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[: int(n)]).decode()) for row, n in zip(gathered, np.ravel(sizes))]
