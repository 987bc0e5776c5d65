"""The runtime of an exported streamformer transducer: loads an artifact written by
``streamformer.decoding.export.export_transducer`` and runs it with jax and numpy only.

This file imports nothing from streamformer (it is also copied into each artifact as ``runtime.py``), so a
deployment can load it by path without the model code:

    >>> import importlib.util
    >>> spec = importlib.util.spec_from_file_location("runtime", "artifact/runtime.py")
    >>> runtime = importlib.util.module_from_spec(spec); spec.loader.exec_module(runtime)
    >>> artifact = runtime.load_exported("artifact")
    >>> state = artifact.init_state()
    >>> state, tokens, frames, lengths = artifact.step(state, chunk, chunk_lengths)   # (B, S + R, F), (B,)

Letters: B streams, S + R chunk frames, F features, L token slots, T' padded input frames.
"""

from __future__ import annotations

import json
import os

import numpy as np
from jax import export as jax_export
from jax import numpy as jnp

#: 1: the first format. 2: bfloat16 parameters (``streamformer.quantize``), which numpy's npz cannot hold, are
#: stored as their bits (uint16) under "p<i>.bfloat16"; the exporter writes 2 only for such artifacts.
FORMAT_VERSION = 2

__all__ = ["FORMAT_VERSION", "ExportedTransducer", "load_exported"]


class ExportedTransducer:
    """A loaded artifact: ``manifest`` (its JSON description), ``init_state``, ``step``, ``reset``,
    ``decoded_frames``, ``transcribe``, ``normalize`` (with the artifact's feature statistics) and ``decode``
    (its tokenizer)."""

    def __init__(self, directory: str | os.PathLike, manifest: dict):
        self.directory, self.manifest = os.fspath(directory), manifest
        path = lambda name: os.path.join(self.directory, name)  # noqa: E731
        with np.load(path("params.npz")) as params:
            self._params = [
                params[f"p{i}"] if f"p{i}" in params else params[f"p{i}.bfloat16"].view(jnp.bfloat16)
                for i in range(manifest["num_params"])
            ]
        with np.load(path("state.npz")) as state:
            self._state = [state[f"s{i}"] for i in range(manifest["num_state"])]
        with open(path("step.bin"), "rb") as f:
            self._step = jax_export.deserialize(bytearray(f.read()))
        with open(path("offline.bin"), "rb") as f:
            self._offline = jax_export.deserialize(bytearray(f.read()))
        self._stats = None
        if manifest.get("global_stats"):
            with open(path(manifest["global_stats"])) as f:
                stats = json.load(f)
            self._stats = (np.asarray(stats["mean"], np.float32), np.asarray(stats["invstddev"], np.float32))
        self._sp = None
        if manifest.get("tokenizer"):
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=path(manifest["tokenizer"]))

    @property
    def batch_size(self) -> int:
        return self.manifest["batch_size"]

    def init_state(self) -> list[np.ndarray]:
        """A fresh state for ``batch_size`` streams (a flat list of arrays)."""
        return [np.array(x) for x in self._state]

    def _check(self, name, array, shape):
        array = np.asarray(array)
        if array.shape != tuple(shape):
            raise ValueError(f"{name}: expected shape {tuple(shape)}, got {array.shape}")
        return array

    def step(self, state, features, lengths):
        """One streaming step: features (B, S + R, F) float32, lengths (B,) valid frames with the right
        context -> (new state, best tokens (B, L), their frames (B, L), token counts (B,))."""
        B, m = self.batch_size, self.manifest
        features = self._check(
            "segment_features", features, (B, m["segment_length"] + m["right_context_length"], m["input_dim"])
        )
        lengths = self._check("segment_lengths", lengths, (B,))
        if len(state) != m["num_state"]:
            raise ValueError(f"state: expected {m['num_state']} arrays (from init_state), got {len(state)}")
        out = self._step.call(*self._params, *state, features.astype(np.float32), lengths.astype(np.int32))
        n = m["num_state"]
        return list(out[:n]), np.asarray(out[n]), np.asarray(out[n + 1]), np.asarray(out[n + 2])

    def _state_paths(self) -> list[str]:
        paths = self.manifest.get("state_paths")
        if paths is None:
            raise ValueError(
                "state_paths: this artifact does not name its state arrays (exported by an older streamformer); "
                "export it again to reset searches alone or read the frames decoded"
            )
        return paths

    def reset(self, state, mask, *, search_only: bool = False) -> list[np.ndarray]:
        """The streams where mask (B,) is True started afresh; with ``search_only`` only their search state
        (an endpoint inside a stream that goes on: the transcriber keeps its context)."""
        mask = self._check("mask", mask, (self.batch_size,)).astype(bool)
        paths = self._state_paths() if search_only else [".search"] * len(self._state)
        fresh = []
        for path, axis, new, old in zip(paths, self.manifest["state_batch_axes"], self._state, state):
            if not path.startswith(".search"):
                fresh.append(np.asarray(old))
                continue
            shape = [1] * np.ndim(old)
            shape[axis] = -1
            fresh.append(np.where(mask.reshape(shape), new, np.asarray(old)))
        return fresh

    def decoded_frames(self, state) -> np.ndarray:
        """(B,) encoder frames each stream's search decoded since its start or its last reset (what endpoint
        rules count)."""
        return np.asarray(state[self._state_paths().index(".search.frames")])

    def transcribe(self, sources, source_lengths):
        """Offline: sources (B, T' + R, F) padded to the exported width, source_lengths (B,) -> (tokens (B, L),
        frames (B, L), token counts (B,))."""
        B, m = self.batch_size, self.manifest
        sources = self._check(
            "sources", sources, (B, m["max_frames"] + m["right_context_length"], m["input_dim"])
        )
        source_lengths = self._check("source_lengths", source_lengths, (B,))
        if np.any(source_lengths > m["max_frames"]) or np.any(source_lengths < 0):
            raise ValueError(
                f"source_lengths: expected values in [0, {m['max_frames']}], got {source_lengths}"
            )
        out = self._offline.call(*self._params, sources.astype(np.float32), source_lengths.astype(np.int32))
        return tuple(np.asarray(x) for x in out)

    def normalize(self, features: np.ndarray) -> np.ndarray:
        if self._stats is None:
            raise ValueError("global_stats: this artifact was exported without feature statistics")
        return ((np.asarray(features) - self._stats[0]) * self._stats[1]).astype(np.float32)

    def piece(self, token: int) -> str:
        """The tokenizer's piece of a token id (word-initial pieces start with "\u2581")."""
        if self._sp is None:
            raise ValueError("tokenizer: this artifact was exported without a tokenizer")
        return self._sp.id_to_piece(int(token))

    def decode(self, tokens) -> str:
        if self._sp is None:
            raise ValueError("tokenizer: this artifact was exported without a tokenizer")
        blank = self.manifest["blank"]
        return self._sp.decode([int(t) for t in tokens if int(t) != blank])


def load_exported(directory: str | os.PathLike, *, expected_config: dict | None = None) -> ExportedTransducer:
    """Loads an artifact directory. ``expected_config`` (a dict of TransducerConfig fields) must match the
    artifact's config when given. Raises ValueError for an artifact of a newer format or another config."""
    path = os.path.join(os.fspath(directory), "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"directory: no exported artifact (manifest.json) in {os.fspath(directory)!r}"
        )
    with open(path) as f:
        manifest = json.load(f)
    version = manifest.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"format_version: this loader reads artifacts of format 1 to {FORMAT_VERSION}, got {version!r} "
            f"(exported by a newer streamformer?)"
        )
    if expected_config is not None:
        differ = {
            key: (value, manifest["config"].get(key))
            for key, value in expected_config.items()
            if manifest["config"].get(key) != value
        }
        if differ:
            detail = ", ".join(f"{k}: expected {a!r}, artifact has {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"expected_config: the artifact was exported from another config ({detail})")
    return ExportedTransducer(directory, manifest)
