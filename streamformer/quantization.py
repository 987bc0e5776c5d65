"""Quantised inference: ``quantize(model, variables, "int8" | "bfloat16")`` turns a float32 model and its
variables into a pair that runs wherever the float32 pair runs for inference (``apply`` with ``infer``,
``transcribe``, ``transcribe_streaming``, ..., the searches, ``StreamingDecoder``, ``export_transducer``).

The model is the same one with ``config.weights`` set: each Dense layer and the predictor's embedding become
their inference forms (``streamformer._nn.QuantizedDense``, ``QuantizedEmbed``; how each computes is
described there). The variables are the float32 ones with every matrix converted: "int8" stores each Dense
kernel as int8 with one symmetric float32 scale per output channel (and the embedding one scale per
symbol), about a quarter of the bytes; "bfloat16" stores kernels and the embedding in bfloat16.
Biases, layer norms and ConvEmformer's depthwise convolution stay float32.

Training and conversion to torchaudio need float32 weights: ``convert.to_torchaudio`` refuses a quantised
model or variables, and quantising is one-way (keep the float32 variables to train further).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ._nn import WEIGHT_FORMATS, quantize_rows
from .streaming import StreamingEncoder
from .transducer import RNNT

__all__ = ["QUANTIZED_FORMATS", "is_quantized", "quantize"]

#: The weight formats ``quantize`` makes.
QUANTIZED_FORMATS = tuple(w for w in WEIGHT_FORMATS if w != "float32")


def _dtype(leaf):
    """A leaf's dtype without copying it (jax and numpy arrays carry one; anything else is read by numpy)."""
    return getattr(leaf, "dtype", None) or np.asarray(leaf).dtype


def _model_weights(model) -> str:
    if not isinstance(model, (RNNT, StreamingEncoder)):
        raise TypeError(
            "model: expected a streamformer RNNT, Emformer or ConvEmformer, got " + type(model).__name__
        )
    return model.config.weights


def is_quantized(model=None, variables=None) -> bool:
    """Whether ``model`` (its ``config.weights``) or ``variables`` (an int8 or bfloat16 parameter) is quantised."""
    if model is not None and _model_weights(model) != "float32":
        return True
    if variables is not None:
        return any(_dtype(leaf) in (jnp.int8, jnp.bfloat16) for leaf in jax.tree_util.tree_leaves(variables))
    return False


def _with_weights(model, weights: str):
    """The same model with ``config.weights = weights`` (an RNNT loses its training-only simple-loss
    projections: inference never reads them)."""
    if isinstance(model, RNNT):
        part = model.transcriber
        config = dataclasses.replace(model.config, weights=weights)
        return RNNT.from_config(config, dtype=part.dtype, param_dtype=part.param_dtype)
    config = dataclasses.replace(model.config, weights=weights)
    return type(model).from_config(config, dtype=model.dtype, param_dtype=model.param_dtype)


def _convert_module(path: tuple[str, ...], target: dict, source: dict) -> dict:
    """One module's float32 parameters ``source`` (leaf name -> array) in the layout ``target`` (leaf name ->
    ShapeDtypeStruct) of its quantised form."""
    if "int8_kernel" in target:  # Dense kernel (in, out): one scale per output channel (column)
        values, scales = quantize_rows(np.asarray(source["kernel"], np.float32).T)
        converted = {"int8_kernel": np.ascontiguousarray(values.T), "scale": scales}
    elif "int8_embedding" in target:  # embedding (V, E): one scale per symbol
        values, scales = quantize_rows(source["embedding"])
        converted = {"int8_embedding": values, "scale": scales}
    else:
        converted = {}
    for name, spec in target.items():
        if name not in converted:
            converted[name] = np.asarray(source[name]).astype(spec.dtype)
        if converted[name].shape != spec.shape:
            raise ValueError(
                f"variables: {'/'.join((*path, name))} converts to shape {converted[name].shape}, the quantised "
                f"model expects {spec.shape}"
            )
    return {name: jnp.asarray(value) for name, value in converted.items()}


def quantize(model, variables, weights: str):
    """A quantised copy of a float32 model and its variables, for inference.

    Args:
        model: an ``RNNT`` (from ``emformer_rnnt_model``, ``emformer_rnnt_base``, ``conv_emformer_rnnt_model``,
            ``RNNT.from_config``), ``Emformer`` or ``ConvEmformer`` with float32 weights.
        variables: its variables (``{"params": ...}``), float32.
        weights: "int8" (weight matrices as int8 with per-output-channel symmetric scales, activations
            quantised per row at run time; about 4x smaller) or "bfloat16" (matrices in bfloat16, 2x smaller).

    Returns:
        ``(quantized_model, quantized_variables)``: use them as the float32 pair for inference. The model is
        the same configuration with ``config.weights == weights``.

    Example:
        >>> q_model, q_variables = streamformer.quantize(model, variables, "int8")
        >>> encodings, lengths, state = q_model.apply(q_variables, chunk, chunk_lengths, state,
        ...                                           method="transcribe_streaming")
    """
    if weights not in QUANTIZED_FORMATS:
        raise ValueError(f"weights: expected one of {list(QUANTIZED_FORMATS)}, got {weights!r}")
    current = _model_weights(model)
    if current != "float32":
        raise ValueError(
            f"model: expected a float32 model, got one whose weights are already {current!r}; quantise the "
            "float32 model and its variables"
        )
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise TypeError(
            "variables: expected the model's variables, a dict with 'params', got "
            + (
                f"a dict with keys {sorted(variables)}"
                if isinstance(variables, Mapping)
                else type(variables).__name__
            )
        )
    if is_quantized(variables=variables):
        raise ValueError(
            "variables: expected float32 variables, got int8 or bfloat16 parameters (already quantised); "
            "quantise the float32 variables"
        )
    source = traverse_util.flatten_dict(dict(variables["params"]))
    expected = traverse_util.flatten_dict(
        jax.eval_shape(model.init, jax.random.key(0), *model.example_inputs())["params"]
    )
    problems = sorted("/".join(p) for p in set(expected) ^ set(source))
    problems += [
        f"{'/'.join(p)}: expected {expected[p].shape} {expected[p].dtype}, got "
        f"{np.shape(source[p])} {_dtype(source[p])}"
        for p in sorted(set(expected) & set(source))
        if np.shape(source[p]) != expected[p].shape or _dtype(source[p]) != jnp.float32
    ]
    if problems:
        raise ValueError(
            f"variables: expected the float32 parameters of this {type(model).__name__}; differing: "
            + ", ".join(problems[:10])
            + (f" and {len(problems) - 10} more" if len(problems) > 10 else "")
        )
    quantized_model = _with_weights(model, weights)
    target = traverse_util.flatten_dict(
        jax.eval_shape(quantized_model.init, jax.random.key(0), *quantized_model.example_inputs())["params"]
    )
    modules: dict[tuple[str, ...], dict] = {}
    for path, spec in target.items():
        modules.setdefault(path[:-1], {})[path[-1]] = spec
    params = {}
    for module, leaves in modules.items():
        float_leaves = {path[-1]: value for path, value in source.items() if path[:-1] == module}
        for name, value in _convert_module(module, leaves, float_leaves).items():
            params[(*module, name)] = value
    return quantized_model, {"params": traverse_util.unflatten_dict(params)}
