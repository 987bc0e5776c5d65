"""Export of a transducer's decoding with ``jax.export``: the streaming step (transcriber step + search step,
state in, state out) and the offline transcription, serialised into an artifact directory with the config,
the tokenizer and the feature statistics beside them. ``load_exported`` (``exported_runtime.py``, also
copied into the artifact as ``runtime.py``) runs it with jax and numpy only.

Artifact files: manifest.json (format version, config, shapes, search, the state arrays' names), step.bin and
offline.bin (``jax.export`` serialisations), params.npz (the parameters, passed in as arguments; bfloat16 ones
as their uint16 bits, format 2), state.npz (a fresh streaming state), tokenizer.model and global_stats.json
(when given), runtime.py.

Shapes are fixed at export: ``batch_size`` streams, ``max_tokens`` token slots (a stream emitting more stops
recording them: its count passes ``max_tokens``), offline inputs padded to ``max_frames``. The exported
functions are for the backend they were exported on (``platforms``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from .. import RNNT, _checks
from .. import io as sf_io
from ..state import batch_axes
from . import _common
from .exported_runtime import FORMAT_VERSION, ExportedTransducer, load_exported
from .greedy import GreedySearch
from .modified_beam import ModifiedBeamSearch
from .streaming import StreamingDecoder

__all__ = ["FORMAT_VERSION", "ExportedTransducer", "export_transducer", "load_exported"]


def _best(search_state):
    """(tokens (B, L), frames (B, L), counts (B,)) of each stream's best hypothesis."""
    if search_state.lengths.ndim == 2:
        return search_state.tokens[:, 0], search_state.timestamps[:, 0], search_state.lengths[:, 0]
    return search_state.tokens, search_state.timestamps, search_state.lengths


def export_transducer(
    model: RNNT,
    variables,
    directory: str | os.PathLike,
    *,
    search: GreedySearch | ModifiedBeamSearch | None = None,
    batch_size: int = 1,
    max_frames: int = 1600,
    max_tokens: int = 512,
    blank: int = -1,
    tokenizer_path: str | os.PathLike | None = None,
    global_stats_path: str | os.PathLike | None = None,
    platforms: tuple[str, ...] | None = None,
) -> dict:
    """Writes an artifact directory and returns its manifest.

    Args:
        search: ``GreedySearch`` (default) or ``ModifiedBeamSearch`` (searches with fixed room; torchaudio's
            beam search grows its room by rerunning, which an exported fixed-shape program cannot).
        batch_size: B streams of the streaming step and utterances of the offline program.
        max_frames: input frames (right context excluded) the offline program takes, padded.
        max_tokens: token slots per stream.
        tokenizer_path, global_stats_path: copied beside the programs.
        platforms: ``jax.export`` platforms (default: the current backend).
    """
    search = GreedySearch() if search is None else search
    if not isinstance(search, (GreedySearch, ModifiedBeamSearch)):
        raise TypeError(f"search: expected a GreedySearch or ModifiedBeamSearch, got {type(search).__name__}")
    _checks.positive_int("batch_size", batch_size)
    _checks.positive_int("max_frames", max_frames)
    _checks.positive_int("max_tokens", max_tokens)
    blank = _common.check_blank(model, blank)
    S, R, F = model.segment_length, model.right_context_length, model.config.input_dim
    decoder = StreamingDecoder(model, variables, search=search, blank=blank, max_tokens=max_tokens)
    state = decoder.init(batch_size)
    params, params_tree = jax.tree_util.tree_flatten(variables)
    leaves, state_tree = jax.tree_util.tree_flatten(state)
    n = len(leaves)

    def step(*args):
        variables = jax.tree_util.tree_unflatten(params_tree, args[: len(params)])
        state = jax.tree_util.tree_unflatten(state_tree, args[len(params) : len(params) + n])
        new = decoder._step_impl(variables, state, args[-2], args[-1])
        return (*jax.tree_util.tree_leaves(new), *_best(new.search))

    def offline(*args):
        variables = jax.tree_util.tree_unflatten(params_tree, args[: len(params)])
        encodings, lengths = model.apply(variables, args[-2], args[-1], method=RNNT.transcribe)
        start = search.init(model, variables, batch_size, blank=blank, max_tokens=max_tokens)
        final = search.frames(model, variables, start, encodings, lengths, blank=blank)
        return _best(final)

    spec = lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.asarray(x).dtype)  # noqa: E731
    kwargs = {} if platforms is None else {"platforms": tuple(platforms)}
    step_exported = jax_export.export(jax.jit(step), **kwargs)(
        *map(spec, params),
        *map(spec, leaves),
        jax.ShapeDtypeStruct((batch_size, S + R, F), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    )
    offline_exported = jax_export.export(jax.jit(offline), **kwargs)(
        *map(spec, params),
        jax.ShapeDtypeStruct((batch_size, max_frames + R, F), jnp.float32),
        jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    )
    os.makedirs(directory, exist_ok=True)
    join = lambda name: os.path.join(os.fspath(directory), name)  # noqa: E731
    sf_io.atomic_write_bytes(join("step.bin"), bytes(step_exported.serialize()))
    sf_io.atomic_write_bytes(join("offline.bin"), bytes(offline_exported.serialize()))
    stored = {}
    for i, x in enumerate(map(np.asarray, params)):
        if x.dtype == jnp.bfloat16:  # npz has no bfloat16: its bits, which the runtime views back
            stored[f"p{i}.bfloat16"] = x.view(np.uint16)
        else:
            stored[f"p{i}"] = x
    _save_npz(join("params.npz"), stored)
    _save_npz(join("state.npz"), {f"s{i}": np.asarray(x) for i, x in enumerate(leaves)})
    files = {}
    for key, source, name in (
        ("tokenizer", tokenizer_path, "tokenizer.model"),
        ("global_stats", global_stats_path, "global_stats.json"),
    ):
        if source is not None:
            if not os.path.isfile(source):
                raise FileNotFoundError(f"{key}_path: no file at {os.fspath(source)!r}")
            shutil.copyfile(source, join(name))
            files[key] = name
    shutil.copyfile(os.path.join(os.path.dirname(__file__), "exported_runtime.py"), join("runtime.py"))
    manifest = {
        # 2 only where needed, so that loaders of format 1 still read every artifact without bfloat16
        "format_version": 2 if any(name.endswith(".bfloat16") for name in stored) else 1,
        "config": dataclasses.asdict(model.config),
        "search": {"kind": type(search).__name__, **dataclasses.asdict(search)},
        "blank": blank,
        "batch_size": batch_size,
        "max_frames": max_frames,
        "max_tokens": max_tokens,
        "segment_length": S,
        "right_context_length": R,
        "input_dim": F,
        "time_reduction_stride": model.config.time_reduction_stride,
        "num_params": len(params),
        "num_state": n,
        "state_batch_axes": jax.tree_util.tree_leaves(batch_axes(state)),
        # Each state array's place in StreamingDecoderState (".transcriber...", ".search.frames", ...): the
        # runtime resets the search alone (an endpoint) and reads the frames decoded by name.
        "state_paths": [
            jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(state)[0]
        ],
        "platforms": list(step_exported.platforms),
        "jax_version": jax.__version__,
        **files,
    }
    # The manifest last: a directory with a manifest is a complete artifact.
    sf_io.atomic_write_text(join("manifest.json"), json.dumps(manifest, indent=1))
    return manifest


def _save_npz(path: str, arrays: dict) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    sf_io.atomic_write_bytes(path, buffer.getvalue())
