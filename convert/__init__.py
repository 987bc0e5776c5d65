"""Two-way conversion between torchaudio state dicts and streamformer's Flax variables.

One rule maps every model: streamformer's Flax modules carry torchaudio's attribute names, a list index
becoming a ``_N`` suffix (``emformer_layers_3`` <-> ``emformer_layers.3``, ``pos_ff_4`` <-> ``pos_ff.4``).
Parameter leaves map as

==========================  ==================================  ========================
Flax leaf                   torchaudio                          layout
==========================  ==================================  ========================
Dense ``kernel`` (in, out)  Linear ``weight`` (out, in)          transposed
Conv ``kernel`` (K, 1, D)   depthwise Conv1d ``weight`` (D, 1, K) axes reversed
LayerNorm ``scale``         LayerNorm ``weight``                 as is
Embed ``embedding``         Embedding ``weight``                 as is
``bias``                    ``bias``                             as is
==========================  ==================================  ========================

``from_torchaudio`` checks the whole state dict against the model before converting anything and raises one
``ConversionError`` listing every missing, unexpected and mis-shaped key. torch is imported only to read
``.pt``/``.pth`` files, always with ``weights_only=True``: a checkpoint never runs code.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from streamformer.quantization import is_quantized

__all__ = ["ConversionError", "from_torchaudio", "to_torchaudio", "load_state_dict", "torchaudio_key"]

_INDEXED = re.compile(r"^(.*)_(\d+)$")


class ConversionError(ValueError):
    """A state dict does not fit the model; the message lists every problem."""


def torchaudio_key(path: tuple[str, ...]) -> str:
    """Maps a Flax parameter path, e.g. ``('emformer_layers_0', 'attention', 'out_proj', 'kernel')``, to
    torchaudio's name, ``'emformer_layers.0.attention.out_proj.weight'``."""
    *modules, leaf = path
    parts = []
    for name in modules:
        match = _INDEXED.match(name)
        parts.extend(match.groups() if match else (name,))
    parts.append("bias" if leaf == "bias" else "weight")
    return ".".join(parts)


def _to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    """A writable, C-contiguous copy in torch's layout (torch.from_numpy warns on read-only arrays)."""
    if leaf == "kernel":
        array = array.T if array.ndim == 2 else np.transpose(array, (2, 1, 0))
    return np.array(array, order="C", copy=True)


def _from_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
    if leaf == "kernel":
        return array.T if array.ndim == 2 else np.transpose(array, (2, 1, 0))
    return array


#: Top-level parameter collections that exist only for training and have no torchaudio counterpart: the
#: pruned RNN-T loss's projections (``streamformer.transducer.with_simple_loss_projections``) and the auxiliary
#: CTC head (``streamformer.transducer.with_ctc_head``).
_TRAINING_ONLY = ("simple_loss", "ctc_head")


def _is_training_only(path: tuple[str, ...]) -> bool:
    return path[0] in _TRAINING_ONLY


def _refuse_quantized(model, variables, what: str) -> None:
    """torchaudio's models hold float32 weights: a quantised model or quantised variables
    (``streamformer.quantize``) have no torchaudio form, and quantising is one-way."""
    weights = getattr(getattr(model, "config", None), "weights", "float32")
    if weights != "float32":
        remedy = (
            "convert into the float32 model, then quantise"
            if what == "from_torchaudio"
            else "convert the float32 model and variables it was quantised from"
        )
        raise ConversionError(
            f"model: {what} needs a float32 model, got one with {weights} weights (from streamformer.quantize); "
            + remedy
        )
    if variables is not None and is_quantized(variables=variables):
        raise ConversionError(
            f"variables: {what} needs float32 variables, got int8 or bfloat16 parameters (from "
            "streamformer.quantize); convert the float32 variables they were quantised from"
        )


def _all_param_shapes(model) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    if not hasattr(model, "example_inputs"):
        raise TypeError(
            f"model: expected a streamformer model with example_inputs(), got {type(model).__name__}"
        )
    shapes = jax.eval_shape(model.init, jax.random.key(0), *model.example_inputs())
    return traverse_util.flatten_dict(shapes["params"])


def _param_shapes(model) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """The parameters torchaudio has (training-only ones left out)."""
    return {path: spec for path, spec in _all_param_shapes(model).items() if not _is_training_only(path)}


def _init_training_only(model, rng) -> dict[tuple[str, ...], jax.Array]:
    """Freshly initialised training-only parameters of ``model`` (empty when it has none): those modules
    alone are initialised, not the whole model."""
    fresh = {}
    for index, name in enumerate(_TRAINING_ONLY):
        module = getattr(model, name, None)
        if module is not None:
            params = module.clone(parent=None).init(jax.random.fold_in(rng, index), *module.example_inputs())
            flat = traverse_util.flatten_dict(params["params"])
            fresh.update({(name, *path): value for path, value in flat.items()})
    return fresh


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # a torch tensor; float() first since numpy has no bfloat16
        tensor = value.detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        return tensor.numpy()
    return np.asarray(value)


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads a torchaudio checkpoint: ``.pt``/``.pth`` via ``torch.load(weights_only=True)``, or ``.safetensors``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state_dict: no checkpoint file at {path!r}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if path.endswith((".pt", ".pth", ".ckpt", ".bin")):
        import torch

        loaded = torch.load(path, map_location="cpu", weights_only=True)
        if (
            isinstance(loaded, Mapping)
            and "state_dict" in loaded
            and isinstance(loaded["state_dict"], Mapping)
        ):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, Mapping):
            raise ConversionError(
                f"state_dict: {path!r} holds a {type(loaded).__name__}, expected a state dict"
            )
        return {key: _to_numpy(value) for key, value in loaded.items()}
    raise ValueError(f"state_dict: expected a .pt, .pth or .safetensors file, got {path!r}")


def from_torchaudio(
    model, state_dict: Mapping[str, Any] | str | os.PathLike, *, rng: jax.Array | None = None
) -> dict:
    """Converts a torchaudio state dict into Flax variables ``{'params': ...}`` for ``model``.

    Args:
        model: a streamformer model (Emformer, ConvEmformer, RNNT) configured like the torchaudio model.
        state_dict: parameter name -> torch tensor or numpy array, or a path to a ``.pt``/``.pth``/``.safetensors``
            checkpoint.
        rng: initialises the parameters torchaudio has no counterpart for (the pruned RNN-T loss's
            ``simple_loss`` projections, on a model from ``with_simple_loss_projections``; the auxiliary
            ``ctc_head``, on a model from ``with_ctc_head``), with a warning that says so; default
            ``jax.random.key(0)``.

    Raises:
        ConversionError: listing every missing, unexpected and mis-shaped key at once.
    """
    _refuse_quantized(model, None, "from_torchaudio")
    if isinstance(state_dict, (str, os.PathLike)):
        state_dict = load_state_dict(state_dict)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict: expected a mapping or a path, got {type(state_dict).__name__}")
    expected = {torchaudio_key(path): (path, spec) for path, spec in _param_shapes(model).items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    problems = [f"missing key {key!r}" for key in missing] + [f"unexpected key {key!r}" for key in unexpected]
    converted = {}
    for key in sorted(set(expected) & set(state_dict)):
        path, spec = expected[key]
        array = _from_torch_layout(path[-1], _to_numpy(state_dict[key]))
        if array.shape != spec.shape:
            torch_shape = _to_torch_layout(path[-1], np.empty(spec.shape, dtype=np.uint8)).shape
            problems.append(
                f"key {key!r}: expected shape {torch_shape}, got {tuple(_to_numpy(state_dict[key]).shape)}"
            )
            continue
        converted[path] = jax.numpy.asarray(array, dtype=spec.dtype)
    if problems:
        raise ConversionError(
            f"state_dict does not fit {type(model).__name__} ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    fresh = _init_training_only(model, jax.random.key(0) if rng is None else rng)
    if fresh:
        names = sorted({".".join(path[:-1]) for path in fresh})
        warnings.warn(
            f"from_torchaudio: torchaudio has no {', '.join(names)}; initialised them freshly "
            f"(training-only parameters: the pruned RNN-T loss's projections, the auxiliary CTC head)",
            stacklevel=2,
        )
        converted.update(fresh)
    return {"params": traverse_util.unflatten_dict(converted)}


def to_torchaudio(model, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Converts Flax variables of ``model`` into a torchaudio state dict of float32 numpy arrays, which the
    torchaudio model loads with ``load_state_dict({k: torch.from_numpy(v) ...}, strict=True)``. Training-only
    parameters are left out: the pruned RNN-T loss's ``simple_loss`` projections silently (they serve only
    the loss), an auxiliary ``ctc_head`` with a warning (torchaudio's RNNT has no CTC head, so CTC decoding
    with it is lost; the transducer's outputs do not use it). Quantised variables are refused."""
    _refuse_quantized(model, variables, "to_torchaudio")
    params = variables["params"] if "params" in variables else variables
    flat = traverse_util.flatten_dict(dict(params))
    if "ctc_head" in params:
        warnings.warn(
            "to_torchaudio: torchaudio's RNNT has no CTC head; left out ctc_head (an auxiliary training "
            "output: the transducer's outputs do not use it)",
            stacklevel=2,
        )
    flat = {path: value for path, value in flat.items() if not _is_training_only(path)}
    expected = _param_shapes(model)
    if set(flat) != set(expected):
        names = sorted(torchaudio_key(p) for p in set(flat) ^ set(expected))
        raise ConversionError(f"variables do not fit {type(model).__name__}: differing parameters {names}")
    return {
        torchaudio_key(path): _to_torch_layout(path[-1], np.asarray(value, dtype=np.float32))
        for path, value in sorted(flat.items())
    }
