"""Checkpoint conversion of full RNN-T state dicts: the layout of torchaudio's emformer_rnnt_base(4097) (its
published LibriSpeech checkpoint), exact round trips, and ``python -m convert`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from streamformer.convert import ConversionError, from_torchaudio, to_torchaudio, torchaudio_key
from streamformer.convert.cli import load_converted, main
from streamformer.transducer import emformer_rnnt_base, emformer_rnnt_model

TINY = dict(
    input_dim=8,
    encoding_dim=16,
    num_symbols=11,
    segment_length=4,
    right_context_length=4,
    time_reduction_input_dim=8,
    time_reduction_stride=4,
    transformer_num_heads=2,
    transformer_ffn_dim=16,
    transformer_num_layers=2,
    transformer_dropout=0.1,
    transformer_activation="relu",
    transformer_left_context_length=3,
    transformer_max_memory_size=0,
    transformer_weight_init_scale_strategy="constant",
    transformer_tanh_on_mem=False,
    symbol_embedding_dim=8,
    num_lstm_layers=1,
    lstm_layer_norm=False,
    lstm_layer_norm_epsilon=1e-5,
    lstm_dropout=0.0,
)


def test_base_layout_and_exact_round_trip(torchaudio_ref):
    """The key set and shapes of emformer_rnnt_base(4097), converted both ways bit for bit; the result loads
    strictly into torchaudio."""
    torch.manual_seed(0)
    reference = torchaudio_ref.models.emformer_rnnt_base(4097)
    state_dict = reference.state_dict()
    model = emformer_rnnt_base(4097)
    shapes = traverse_util.flatten_dict(
        jax.eval_shape(model.init, jax.random.key(0), *model.example_inputs())
    )
    ours = {torchaudio_key(path[1:]): (path[-1], spec.shape) for path, spec in shapes.items()}
    assert set(ours) == set(state_dict)
    assert len(state_dict) == 20 * 16 + 3 * 6 + 14  # 20 Emformer layers, 3 LSTM layers, the rest
    for key, tensor in state_dict.items():
        leaf, shape = ours[key]
        assert shape == (tensor.shape[::-1] if leaf == "kernel" else tuple(tensor.shape)), key
    assert ours["predictor.embedding.weight"] == ("embedding", (4097, 512))
    assert ours["transcriber.transformer.emformer_layers.19.attention.emb_to_key_value.weight"][1] == (
        512,
        1024,
    )

    variables = from_torchaudio(model, state_dict)
    back = to_torchaudio(model, variables)
    assert set(back) == set(state_dict)
    for key, tensor in state_dict.items():
        np.testing.assert_array_equal(back[key], tensor.numpy(), err_msg=key)
    result = reference.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in back.items()}, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_mismatched_state_dicts_are_reported_at_once(torchaudio_ref):
    torch.manual_seed(0)
    state_dict = dict(torchaudio_ref.models.emformer_rnnt_model(**TINY).state_dict())
    model = emformer_rnnt_model(**TINY)
    del state_dict["predictor.linear.bias"]
    state_dict["joiner.extra.weight"] = torch.zeros(3)
    state_dict["joiner.linear.weight"] = torch.zeros(12, 16)
    with pytest.raises(ConversionError) as error:
        from_torchaudio(model, state_dict)
    message = str(error.value)
    assert "3 problems" in message
    assert "missing key 'predictor.linear.bias'" in message
    assert "unexpected key 'joiner.extra.weight'" in message
    assert "key 'joiner.linear.weight': expected shape (11, 16), got (12, 16)" in message


@pytest.fixture(scope="module")
def tiny_checkpoint(torchaudio_ref, tmp_path_factory):
    torch.manual_seed(3)
    reference = torchaudio_ref.models.emformer_rnnt_model(**TINY).eval()
    folder = tmp_path_factory.mktemp("ckpt")
    path = folder / "tiny.pt"
    torch.save(reference.state_dict(), path)
    return folder, path, reference


def _assert_same_params(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert set(flat_a) == set(flat_b)
    for key in flat_a:
        np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key))


def test_cli_end_to_end_from_pt(tiny_checkpoint):
    """``python -m convert`` in a subprocess: converts, verifies against torchaudio, writes orbax; reloads."""
    folder, path, reference = tiny_checkpoint
    output = folder / "out_pt"
    args = [sys.executable, "-m", "streamformer.convert", str(path), "emformer_rnnt_model", str(output)]
    for name, value in TINY.items():
        args += ["--arg", f"{name}={json.dumps(value)}"]
    result = subprocess.run(
        args, capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__))
    )
    assert result.returncode == 0, result.stderr
    assert "max abs difference to torchaudio: transcribe" in result.stdout
    assert sorted(os.listdir(output)) == ["model.json", "params"]
    assert not [name for name in os.listdir(folder) if name.startswith(".out_pt.tmp")]
    model, variables = load_converted(output)
    _assert_same_params(variables, from_torchaudio(model, reference.state_dict()))
    assert model.num_symbols == 11 and model.transcriber.time_reduction_stride == 4


def test_cli_from_safetensors_with_json_kwargs(tiny_checkpoint, capsys):
    from safetensors.torch import save_file

    folder, _, reference = tiny_checkpoint
    path = folder / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    output = folder / "out_st"
    argv = [str(path), "emformer_rnnt_model", str(output), "--kwargs", json.dumps(TINY)]
    assert main(argv) == 0
    assert "max abs difference to torchaudio" in capsys.readouterr().out
    model, variables = load_converted(output)
    _assert_same_params(variables, from_torchaudio(model, reference.state_dict()))
    # An existing output is kept unless --overwrite.
    assert main(argv + ["--no-verify"]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(argv + ["--no-verify", "--overwrite"]) == 0


def test_cli_errors(tiny_checkpoint, capsys):
    folder, path, _ = tiny_checkpoint
    assert main([str(path), "emformer_rnnt_model", str(folder / "x"), "--arg", "input_dim=8"]) == 1
    assert "emformer_rnnt_model: bad or missing arguments" in capsys.readouterr().err
    assert (
        main([str(path), "emformer_rnnt_base", str(folder / "x"), "--num-symbols", "4097", "--no-verify"])
        == 1
    )
    err = capsys.readouterr().err
    assert "state_dict does not fit RNNT" in err and "missing key" in err
    assert not (folder / "x").exists()
    emformer_args = [
        "--kwargs",
        '{"input_dim": 8, "num_heads": 2, "ffn_dim": 8, "num_layers": 1, "segment_length": 4}',
    ]
    assert main([str(folder / "nothing.pt"), "emformer", str(folder / "x"), *emformer_args]) == 1
    assert "no checkpoint file" in capsys.readouterr().err


def test_cli_other_factories(torchaudio_ref, tmp_path, capsys):
    """conv_emformer_rnnt_model (torchaudio RNNT with a ConvEmformer transcriber) and a plain Emformer."""
    from streamformer.convert.cli import torchaudio_model

    conv_kwargs = {**TINY, "transformer_kernel_size": 3}
    emformer_kwargs = {
        "input_dim": 8,
        "num_heads": 2,
        "ffn_dim": 8,
        "num_layers": 2,
        "segment_length": 4,
        "right_context_length": 1,
        "left_context_length": 2,
        "max_memory_size": 1,
    }
    for factory, kwargs in (("conv_emformer_rnnt_model", conv_kwargs), ("emformer", emformer_kwargs)):
        torch.manual_seed(4)
        reference = torchaudio_model(factory, kwargs)
        path = tmp_path / f"{factory}.pt"
        torch.save(reference.state_dict(), path)
        assert main([str(path), factory, str(tmp_path / factory), "--kwargs", json.dumps(kwargs)]) == 0
        assert "max abs difference to torchaudio" in capsys.readouterr().out
        model, variables = load_converted(tmp_path / factory)
        _assert_same_params(variables, from_torchaudio(model, reference.state_dict()))
