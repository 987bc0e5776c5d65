"""Checks shared by the Emformer and ConvEmformer tests: each model is compared with torchaudio 2.8 run on the
same converted weights, one sequence at a time (B = 1, unpadded, its right context right after it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from streamformer import ConvEmformer, Emformer, convert

TOL = 1e-4


def converted(torch_model, flax_model):
    torch_model.eval()
    return convert.from_torchaudio(flax_model, torch_model.state_dict())


def torch_forward(torch_model, x: np.ndarray, length: int, R: int) -> np.ndarray:
    """torchaudio on one sequence alone: its ``length`` frames and the R right-context frames after them."""
    with torch.no_grad():
        out, _ = torch_model(torch.from_numpy(x[None, : length + R]), torch.tensor([length]))
    return out[0].numpy()


def torch_infer_loop(torch_model, x: np.ndarray, S: int, R: int) -> np.ndarray:
    """torchaudio's infer over full segments of one sequence (x has N * S + R frames)."""
    states, outputs = None, []
    with torch.no_grad():
        for i in range((x.shape[0] - R) // S):
            chunk = torch.from_numpy(x[None, i * S : i * S + S + R])
            out, _, states = torch_model.infer(chunk, torch.tensor([S + R]), states)
            outputs.append(out[0].numpy())
    return np.concatenate(outputs)


def flax_infer_loop(apply_infer, variables, x: np.ndarray, S: int, R: int) -> np.ndarray:
    state, outputs = None, []
    for i in range((x.shape[1] - R) // S):
        chunk = jnp.asarray(x[:, i * S : i * S + S + R])
        out, _, state = apply_infer(variables, chunk, jnp.full((x.shape[0],), S + R), state)
        outputs.append(np.asarray(out))
    return np.concatenate(outputs, axis=1)


def padded_batch(rng: np.random.Generator, lengths, R: int, D: int, junk: float = 1e3):
    """(B, max(lengths) + R, D) with each sequence's R right-context frames right after its valid frames and
    large random junk beyond them; returns the batch and each sequence's own (length + R, D) frames."""
    T = max(lengths)
    batch = (rng.standard_normal((len(lengths), T + R, D)) * junk).astype(np.float32)
    solos = []
    for b, length in enumerate(lengths):
        solo = rng.standard_normal((length + R, D)).astype(np.float32)
        batch[b, : length + R] = solo
        solos.append(solo)
    return batch, solos


def assert_close(actual, expected, tol=TOL, what=""):
    diff = float(np.max(np.abs(np.asarray(actual) - np.asarray(expected)))) if np.size(expected) else 0.0
    assert diff <= tol, f"{what}: max abs difference {diff:.3g} > {tol}"


def tree_max_abs_diff(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)))
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )


D = 8


def make_emformer(torchaudio_ref, num_layers=3, **kw):
    config = dict(input_dim=D, num_heads=2, ffn_dim=16, num_layers=num_layers, **kw)
    torch.manual_seed(len(str(kw)))
    reference = torchaudio_ref.models.Emformer(**config)
    model = Emformer(**config)
    return reference, model, converted(reference, model)


def make_conv_emformer(torchaudio_ref, num_layers=3, **kw):
    config = dict(input_dim=D, num_heads=2, ffn_dim=16, num_layers=num_layers, **kw)
    torch.manual_seed(len(str(kw)))
    reference = torchaudio_ref.prototype.models.ConvEmformer(**config)
    model = ConvEmformer(**config)
    return reference, model, converted(reference, model)
