"""convert.from_torchaudio / to_torchaudio on Emformer and ConvEmformer: exact strict round trips, checkpoint
files, and one error listing every problem."""

import os
import pickle

import jax
import numpy as np
import pytest
import torch

from streamformer import ConvEmformer, Emformer, convert

CONFIG = dict(
    input_dim=8,
    num_heads=2,
    ffn_dim=16,
    num_layers=2,
    segment_length=4,
    left_context_length=2,
    right_context_length=1,
    max_memory_size=2,
)


@pytest.fixture(scope="module", params=["emformer", "conv_emformer"])
def pair(torchaudio_ref, request):
    torch.manual_seed(0)
    if request.param == "emformer":
        return torchaudio_ref.models.Emformer(**CONFIG), Emformer(**CONFIG)
    return torchaudio_ref.prototype.models.ConvEmformer(**CONFIG, kernel_size=3), ConvEmformer(
        **CONFIG, kernel_size=3
    )


def test_round_trip_is_exact_and_loads_strict(pair):
    reference, model = pair
    state_dict = reference.state_dict()
    back = convert.to_torchaudio(model, convert.from_torchaudio(model, state_dict))
    assert set(back) == set(state_dict)
    for key, tensor in state_dict.items():
        np.testing.assert_array_equal(back[key], tensor.numpy(), err_msg=key)
    fresh = type(reference)(**CONFIG, **({"kernel_size": 3} if "Conv" in type(reference).__name__ else {}))
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()}, strict=True)


def test_flax_variables_round_trip(pair):
    _, model = pair
    variables = model.init(jax.random.key(1), *model.example_inputs())
    again = convert.from_torchaudio(model, convert.to_torchaudio(model, variables))
    for a, b in zip(jax.tree_util.tree_leaves(variables), jax.tree_util.tree_leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_checkpoint_files(pair, tmp_path):
    reference, model = pair
    from safetensors.torch import save_file

    expected = convert.from_torchaudio(model, reference.state_dict())
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    save_file(
        {k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors")
    )
    for name in ("model.pt", "model.safetensors"):
        got = convert.from_torchaudio(model, tmp_path / name)
        for a, b in zip(jax.tree_util.tree_leaves(expected), jax.tree_util.tree_leaves(got)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoints_are_never_unpickled(pair, tmp_path):
    _, model = pair
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError):
        convert.from_torchaudio(model, path)


def test_one_error_lists_every_problem(pair):
    reference, model = pair
    state_dict = dict(reference.state_dict())
    del state_dict["emformer_layers.0.attention.emb_to_query.weight"]
    del state_dict["emformer_layers.1.layer_norm_output.bias"]
    state_dict["emformer_layers.0.extra.weight"] = torch.zeros(3)
    state_dict["emformer_layers.1.attention.out_proj.weight"] = torch.zeros(8, 9)
    with pytest.raises(convert.ConversionError) as error:
        convert.from_torchaudio(model, state_dict)
    message = str(error.value)
    assert "4 problems" in message
    assert "missing key 'emformer_layers.0.attention.emb_to_query.weight'" in message
    assert "missing key 'emformer_layers.1.layer_norm_output.bias'" in message
    assert "unexpected key 'emformer_layers.0.extra.weight'" in message
    assert "key 'emformer_layers.1.attention.out_proj.weight': expected shape (8, 8), got (8, 9)" in message


def test_a_state_dict_from_another_model_is_rejected(torchaudio_ref):
    torch.manual_seed(0)
    emformer = torchaudio_ref.models.Emformer(**CONFIG)
    with pytest.raises(convert.ConversionError, match="missing key 'emformer_layers.0.conv.conv.weight'"):
        convert.from_torchaudio(ConvEmformer(**CONFIG, kernel_size=3), emformer.state_dict())


def test_bad_paths_and_types(tmp_path):
    model = Emformer(**CONFIG)
    with pytest.raises(FileNotFoundError, match="state_dict: no checkpoint file"):
        convert.from_torchaudio(model, tmp_path / "missing.pt")
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(ValueError, match="state_dict: expected a .pt, .pth or .safetensors file"):
        convert.from_torchaudio(model, tmp_path / "weights.txt")
    with pytest.raises(TypeError, match="state_dict: expected a mapping or a path"):
        convert.from_torchaudio(model, 3)
    with pytest.raises(TypeError, match="model: expected a streamformer model"):
        convert.from_torchaudio(object(), {})
