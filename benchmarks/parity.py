"""Parity figures against torchaudio 2.8's own code on the same weights: the max absolute difference of each
model's outputs (Emformer and ConvEmformer forward and streaming infer; the Emformer RNN-T's logits, offline
transcription and streaming transcription). The tests assert these under their tolerances; this prints them.

Run: ``python benchmarks/parity.py`` (CPU, a few seconds after compilation).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch

from streamformer import ConvEmformer, Emformer, convert, emformer_rnnt_model
from streamformer.convert import reference as reference_lib


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def encoders(ta) -> None:
    rng = np.random.default_rng(0)
    S, R, L, M, D, T = 4, 2, 5, 3, 16, 24
    cases = [
        ("Emformer", ta.models.Emformer, Emformer, {}),
        ("ConvEmformer", ta.prototype.models.ConvEmformer, ConvEmformer, {"kernel_size": 5}),
    ]
    for name, torch_class, flax_class, extra in cases:
        config = dict(
            input_dim=D,
            num_heads=2,
            ffn_dim=32,
            num_layers=3,
            segment_length=S,
            left_context_length=L,
            right_context_length=R,
            max_memory_size=M,
            **extra,
        )
        torch.manual_seed(0)
        reference = torch_class(**config).eval()
        model = flax_class(**config)
        variables = convert.from_torchaudio(model, reference.state_dict())
        x = rng.standard_normal((1, T + R, D)).astype(np.float32)
        with torch.no_grad():
            expected, _ = reference(torch.from_numpy(x), torch.tensor([T]))
            state, streamed = None, []
            for i in range(T // S):
                out, _, state = reference.infer(
                    torch.from_numpy(x[:, i * S : i * S + S + R]), torch.tensor([S + R]), state
                )
                streamed.append(out.numpy())
        ours, _ = model.apply(variables, jnp.asarray(x), jnp.array([T]))
        state, ours_streamed = None, []
        for i in range(T // S):
            out, _, state = model.apply(
                variables, jnp.asarray(x[:, i * S : i * S + S + R]), jnp.array([S + R]), state, method="infer"
            )
            ours_streamed.append(np.asarray(out))
        print(
            f"{name:13s} forward {max_diff(ours, expected.numpy()):.2e}   infer loop "
            f"{max_diff(np.concatenate(ours_streamed, 1), np.concatenate(streamed, 1)):.2e}"
        )


def transducer(ta) -> None:
    config = dict(
        input_dim=8,
        encoding_dim=16,
        num_symbols=11,
        segment_length=8,
        right_context_length=4,
        time_reduction_input_dim=8,
        time_reduction_stride=2,
        transformer_num_heads=2,
        transformer_ffn_dim=32,
        transformer_num_layers=2,
        transformer_dropout=0.0,
        transformer_activation="gelu",
        transformer_left_context_length=6,
        transformer_max_memory_size=2,
        transformer_weight_init_scale_strategy="depthwise",
        transformer_tanh_on_mem=True,
        symbol_embedding_dim=12,
        num_lstm_layers=2,
        lstm_layer_norm=True,
        lstm_layer_norm_epsilon=1e-3,
        lstm_dropout=0.0,
    )
    torch.manual_seed(0)
    reference = ta.models.emformer_rnnt_model(**config).eval()
    model = emformer_rnnt_model(**config)
    variables = convert.from_torchaudio(model, reference.state_dict())
    rng = np.random.default_rng(1)
    T, S, R = 32, 8, 4
    x = rng.standard_normal((1, T + R, 8)).astype(np.float32)
    targets = rng.integers(0, 10, (1, 5)).astype(np.int32)
    with torch.no_grad():
        logits, _, _, _ = reference(
            torch.from_numpy(x), torch.tensor([T]), torch.from_numpy(targets).long(), torch.tensor([5])
        )
        encodings, _ = reference.transcribe(torch.from_numpy(x), torch.tensor([T]))
        state, streamed = None, []
        for i in range(T // S):
            out, _, state = reference.transcribe_streaming(
                torch.from_numpy(x[:, i * S : i * S + S + R]), torch.tensor([S + R]), state
            )
            streamed.append(out.numpy())
    ours, *_ = model.apply(variables, jnp.asarray(x), jnp.array([T]), jnp.asarray(targets), jnp.array([5]))
    ours_enc, _ = model.apply(variables, jnp.asarray(x), jnp.array([T]), method="transcribe")
    state, ours_streamed = None, []
    for i in range(T // S):
        out, _, state = model.apply(
            variables,
            jnp.asarray(x[:, i * S : i * S + S + R]),
            jnp.array([S + R]),
            state,
            method="transcribe_streaming",
        )
        ours_streamed.append(np.asarray(out))
    print(
        f"{'Emformer RNN-T':13s} logits {max_diff(ours, logits.numpy()):.2e}   transcribe "
        f"{max_diff(ours_enc, encodings.numpy()):.2e}   transcribe_streaming loop "
        f"{max_diff(np.concatenate(ours_streamed, 1), np.concatenate(streamed, 1)):.2e}"
    )


if __name__ == "__main__":
    torch.set_num_threads(2)
    ta = reference_lib.load()
    encoders(ta)
    transducer(ta)
