"""``python -m streamformer.convert``: a torchaudio checkpoint in, an orbax checkpoint of the Flax parameters out.

Usage::

    python -m streamformer.convert CHECKPOINT FACTORY OUTPUT [--num-symbols N] [--arg NAME=VALUE ...] [--kwargs JSON]
                      [--no-verify] [--atol A] [--overwrite]

- CHECKPOINT: a torchaudio state dict, ``.pt``/``.pth`` (read with ``torch.load(weights_only=True)``) or
  ``.safetensors``.
- FACTORY: ``emformer_rnnt_base`` (needs ``--num-symbols``), ``emformer_rnnt_model``,
  ``conv_emformer_rnnt_model``, ``emformer`` (``Emformer(**kwargs)``) or ``conv_emformer``
  (``ConvEmformer(**kwargs)``); the arguments are the torchaudio factory's / constructor's keywords, given as
  ``--arg name=value`` (values read as JSON: numbers, true/false, null, else a string) and/or
  ``--kwargs '{"name": value}'`` (or ``--kwargs @file.json``).
- OUTPUT: a folder, written atomically (built in a temporary folder beside it, then renamed), holding
  ``params/`` (an orbax checkpoint of ``{'params': ...}``) and ``model.json`` (factory and arguments), read
  back by ``load_converted(OUTPUT) -> (model, variables)``.

When torch is installed the conversion is verified: the torchaudio 2.8 reference model (``convert.reference``)
is built with the same arguments, loads the checkpoint strictly, and its transcribe (or forward) output and
the predictor output on a random input must match ours within ``--atol`` (default 1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from streamformer.io import atomic_directory

from . import from_torchaudio, load_state_dict

__all__ = [
    "FACTORIES",
    "build_model",
    "convert_checkpoint",
    "load_converted",
    "main",
    "torchaudio_model",
    "verify",
]


def _emformer(**kwargs):
    from streamformer.emformer import Emformer

    return Emformer(**kwargs)


def _conv_emformer(**kwargs):
    from streamformer.conv_emformer import ConvEmformer

    return ConvEmformer(**kwargs)


def _rnnt_factory(name: str) -> Callable[..., Any]:
    def build(**kwargs):
        from streamformer import transducer

        return getattr(transducer, name)(**kwargs)

    return build


#: Factory name -> function building our (unbound) model from the torchaudio keywords.
FACTORIES: dict[str, Callable[..., Any]] = {
    "emformer_rnnt_base": _rnnt_factory("emformer_rnnt_base"),
    "emformer_rnnt_model": _rnnt_factory("emformer_rnnt_model"),
    "conv_emformer_rnnt_model": _rnnt_factory("conv_emformer_rnnt_model"),
    "emformer": _emformer,
    "conv_emformer": _conv_emformer,
}


def build_model(factory: str, kwargs: dict[str, Any]):
    """Our model from a factory name and its torchaudio keywords (errors name the factory and arguments)."""
    if factory not in FACTORIES:
        raise ValueError(f"factory: expected one of {sorted(FACTORIES)}, got {factory!r}")
    try:
        return FACTORIES[factory](**kwargs)
    except TypeError as error:
        raise ValueError(f"{factory}: bad or missing arguments {sorted(kwargs)}: {error}") from error


def torchaudio_model(factory: str, kwargs: dict[str, Any]):
    """The torchaudio 2.8 reference counterpart (eval mode)."""
    from . import reference

    ta = reference.load()
    if factory == "emformer_rnnt_base":
        model = ta.models.emformer_rnnt_base(**kwargs)
    elif factory == "emformer_rnnt_model":
        model = ta.models.emformer_rnnt_model(**kwargs)
    elif factory == "conv_emformer_rnnt_model":
        rnnt_kwargs = {
            k: v
            for k, v in kwargs.items()
            if k not in ("transformer_kernel_size", "transformer_conv_activation")
        }
        model = ta.models.emformer_rnnt_model(**rnnt_kwargs)
        stride = kwargs["time_reduction_stride"]
        model.transcriber.transformer = ta.prototype.models.ConvEmformer(
            kwargs["time_reduction_input_dim"] * stride,
            kwargs["transformer_num_heads"],
            kwargs["transformer_ffn_dim"],
            kwargs["transformer_num_layers"],
            kwargs["segment_length"] // stride,
            kwargs["transformer_kernel_size"],
            dropout=kwargs["transformer_dropout"],
            ffn_activation=kwargs["transformer_activation"],
            left_context_length=kwargs["transformer_left_context_length"],
            right_context_length=kwargs["right_context_length"] // stride,
            max_memory_size=kwargs["transformer_max_memory_size"],
            weight_init_scale_strategy=kwargs["transformer_weight_init_scale_strategy"],
            tanh_on_mem=kwargs["transformer_tanh_on_mem"],
            conv_activation=kwargs.get("transformer_conv_activation", "silu"),
        )
    elif factory == "emformer":
        model = ta.models.Emformer(**{k: v for k, v in kwargs.items() if k not in ("dtype", "param_dtype")})
    else:
        model = ta.prototype.models.ConvEmformer(
            **{k: v for k, v in kwargs.items() if k not in ("dtype", "param_dtype")}
        )
    return model.eval()


def verify(
    model, variables, factory: str, kwargs: dict[str, Any], state_dict, seed: int = 0
) -> dict[str, float]:
    """Max abs differences between our model and the torchaudio reference loaded with ``state_dict``
    (strict), on one random utterance of three segments (transcribe and predict for RNN-Ts, forward for
    encoders)."""
    import torch

    reference = torchaudio_model(factory, kwargs)
    reference.load_state_dict(
        {k: torch.from_numpy(np.array(v, np.float32)) for k, v in state_dict.items()}, strict=True
    )
    rng = np.random.default_rng(seed)
    differences = {}
    is_rnnt = factory.endswith("rnnt_base") or factory.endswith("rnnt_model")
    if is_rnnt:
        S, R, D = model.segment_length, model.right_context_length, model.transcriber.input_dim
    else:
        S, R, D = model.segment_length, model.right_context_length, model.input_dim
    T = 3 * S
    x = rng.standard_normal((1, T + R, D)).astype(np.float32)
    with torch.no_grad():
        if is_rnnt:
            theirs = reference.transcribe(torch.from_numpy(x), torch.tensor([T]))[0].numpy()
            ours = jax.jit(lambda a, n: model.apply(variables, a, n, method="transcribe"))(x, jnp.array([T]))[
                0
            ]
            differences["transcribe"] = float(np.abs(np.asarray(ours) - theirs).max())
            tokens = rng.integers(0, model.num_symbols, (1, 5))
            theirs = reference.predict(torch.from_numpy(tokens), torch.tensor([5]), None)[0].numpy()
            ours = model.apply(variables, jnp.asarray(tokens), jnp.array([5]), None, method="predict")[0]
            differences["predict"] = float(np.abs(np.asarray(ours) - theirs).max())
        else:
            theirs = reference(torch.from_numpy(x), torch.tensor([T]))[0].numpy()
            ours = jax.jit(lambda a, n: model.apply(variables, a, n))(x, jnp.array([T]))[0]
            differences["forward"] = float(np.abs(np.asarray(ours) - theirs).max())
    return differences


def _save(output: str, variables, metadata: dict[str, Any], overwrite: bool) -> None:
    import orbax.checkpoint as ocp

    output = os.path.abspath(output)
    if os.path.exists(output) and not overwrite:
        raise FileExistsError(f"output: {output!r} exists (pass --overwrite to replace it)")
    with atomic_directory(output) as work:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(os.path.join(work, "params"), variables)
            checkpointer.wait_until_finished()
        with open(os.path.join(work, "model.json"), "w") as f:
            json.dump(metadata, f, indent=2, sort_keys=True)


def load_converted(path: str | os.PathLike):
    """Reads a ``python -m streamformer.convert`` output folder: returns ``(model, variables)``."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    with open(os.path.join(path, "model.json")) as f:
        metadata = json.load(f)
    model = build_model(metadata["factory"], metadata["kwargs"])
    target = jax.eval_shape(model.init, jax.random.key(0), *model.example_inputs())
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(os.path.join(path, "params"), target)
    return model, variables


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    factory: str,
    kwargs: dict[str, Any],
    output: str | os.PathLike,
    *,
    verify_parity: bool = True,
    atol: float = 1e-3,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
):
    """Converts ``checkpoint`` for ``factory(**kwargs)``, writes ``output``, returns ``(model, variables)``.

    Raises ConversionError when the state dict does not fit, and AssertionError when verification finds a
    difference above ``atol`` (nothing is written then)."""
    model = build_model(factory, kwargs)
    state_dict = load_state_dict(checkpoint)
    variables = from_torchaudio(model, state_dict)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
    log(f"converted {len(state_dict)} tensors ({count:,} parameters) for {factory}")
    if verify_parity:
        try:
            import torch  # noqa: F401
        except ImportError:
            log("torch is not installed: parity with torchaudio not verified")
        else:
            differences = verify(model, variables, factory, kwargs, state_dict)
            log(
                "max abs difference to torchaudio: "
                + ", ".join(f"{k} {v:.2e}" for k, v in differences.items())
            )
            worst = max(differences.values())
            if not worst <= atol:
                raise AssertionError(f"parity check failed: max abs difference {worst:.3e} > atol {atol:g}")
    _save(os.fspath(output), variables, {"factory": factory, "kwargs": kwargs}, overwrite)
    log(f"wrote {os.path.abspath(os.fspath(output))}")
    return model, variables


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m streamformer.convert",
        description="Convert a torchaudio checkpoint into an orbax checkpoint of streamformer parameters.",
    )
    parser.add_argument("checkpoint", help="torchaudio state dict: .pt, .pth or .safetensors")
    parser.add_argument("factory", choices=sorted(FACTORIES))
    parser.add_argument("output", help="output folder (written atomically)")
    parser.add_argument("--num-symbols", type=int, help="num_symbols (emformer_rnnt_base)")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE", help="a factory argument")
    parser.add_argument("--kwargs", help="factory arguments as a JSON object, or @file.json")
    parser.add_argument("--no-verify", action="store_true", help="skip the parity check against torchaudio")
    parser.add_argument("--atol", type=float, default=1e-3, help="parity tolerance (default 1e-3)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    kwargs: dict[str, Any] = {}
    if args.kwargs:
        text = args.kwargs
        if text.startswith("@"):
            with open(text[1:]) as f:
                text = f.read()
        kwargs.update(json.loads(text))
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep or not name:
            print(f"--arg: expected NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        kwargs[name.replace("-", "_")] = _parse_value(value)
    if args.num_symbols is not None:
        kwargs["num_symbols"] = args.num_symbols
    try:
        convert_checkpoint(
            args.checkpoint,
            args.factory,
            kwargs,
            args.output,
            verify_parity=not args.no_verify,
            atol=args.atol,
            overwrite=args.overwrite,
        )
    except (ValueError, FileNotFoundError, FileExistsError, AssertionError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0
