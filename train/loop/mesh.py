"""Devices: data parallelism over every device of every process (``Mesh1D``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["Mesh1D"]


class Mesh1D:
    """Data parallelism over every device (of every process): batches split on the "data" axis, the state
    replicated. With several processes (jax.distributed), each puts its own rows of the global batch."""

    def __init__(self, devices=None):
        devices = np.asarray(devices if devices is not None else jax.devices())
        self.mesh = Mesh(devices, ("data",))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        self.size = devices.size

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.size:
            raise ValueError(
                f"data.batch_size: expected a multiple of the device count {self.size}, got {batch_size}"
            )

    def local_rows(self, batch_size: int) -> slice:
        """The rows of a global batch of ``batch_size`` that this process's devices hold (all of them with
        one process): the only rows this process builds."""
        self.check_batch_size(batch_size)
        spans = self.batch_sharding.addressable_devices_indices_map((batch_size,)).values()
        begin = min(span[0].indices(batch_size)[0] for span in spans)
        end = max(span[0].indices(batch_size)[1] for span in spans)
        if end - begin != batch_size // self.size * len(spans):
            raise ValueError(f"devices: this process's devices hold rows that are not contiguous: {spans}")
        return slice(begin, end)

    def put_batch(self, batch: dict[str, np.ndarray], batch_size: int | None = None) -> dict[str, jax.Array]:
        """Arrays sharded on the batch axis from numpy arrays holding either the whole global batch of
        ``batch_size`` rows (default: the rows given) or only this process's rows (``local_rows``)."""

        def put(x):
            total = batch_size or x.shape[0]
            rows = self.local_rows(total)
            local = x[rows] if x.shape[0] == total else x
            if local.shape[0] != rows.stop - rows.start:
                raise ValueError(
                    f"batch: expected {total} rows or this process's {rows.stop - rows.start}, got {x.shape[0]}"
                )
            return jax.make_array_from_process_local_data(self.batch_sharding, local, (total, *x.shape[1:]))

        return {k: put(v) for k, v in batch.items()}

    def replicate(self, tree: Any) -> Any:
        return jax.device_put(tree, self.replicated)

    def jit_train_step(self, train_step: Callable) -> Callable:
        jitted = jax.jit(
            train_step,
            in_shardings=(self.replicated, self.batch_sharding),
            out_shardings=(self.replicated, self.replicated),
            donate_argnums=(0,),
        )
        if jax.process_count() == 1:
            return jitted
        return _CompiledTogether(jitted)


class _CompiledTogether:
    """A jitted step for several processes: each batch shape is compiled ahead, then every process waits at
    a barrier of the coordination service before running it. Compilation times differ between hosts (a
    persistent-cache hit on one, a compile on another), and CPU collectives (gloo) give up on a peer that
    arrives 30 s late; after the barrier, the processes enter the step's collectives together."""

    def __init__(self, jitted):
        self.jitted, self.compiled = jitted, {}

    def __call__(self, state, batch):
        key = tuple(sorted((name, value.shape) for name, value in batch.items()))
        if key not in self.compiled:
            self.compiled[key] = self.jitted.lower(state, batch).compile()
            from jax._src import distributed

            distributed.global_state.client.wait_at_barrier(
                f"streamformer-train-step-compiled-{len(self.compiled)}", 30 * 60 * 1000
            )
        return self.compiled[key](state, batch)
