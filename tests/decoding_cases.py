"""The tiny transducer the decoding-extension tests share (modified beam search, timestamps, endpointing):
tests/rnnt_cases.py's config initialised by Flax, the joiner's output scaled 3x so distributions are peaked,
tokens are emitted often and hypotheses collide at beam width 4; and three padded utterances."""

from __future__ import annotations

import jax
import numpy as np

from streamformer.transducer import RNNT, emformer_rnnt_model
from tests.rnnt_cases import TINY_RNNT, R, V

F = TINY_RNNT["input_dim"]
BLANK = V - 1
LENGTHS = (40, 24, 16)


def tiny_model(joiner_scale: float = 3.0, blank_bias: float = 0.0) -> tuple[RNNT, dict]:
    """blank_bias is added to the blank's logit: with 1.0 this model decodes all-zero input ("silence") to
    blanks only and random input to many tokens (what the endpointing tests need)."""
    model = emformer_rnnt_model(**TINY_RNNT)
    variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    params = variables["params"]
    linear = dict(params["joiner"]["linear"])
    linear["kernel"] = linear["kernel"] * joiner_scale
    linear["bias"] = linear["bias"].at[BLANK].add(blank_bias)
    params = {**params, "joiner": {**params["joiner"], "linear": linear}}
    return model, {**variables, "params": params}


def padded_sources(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Three utterances of 40, 24 and 16 frames, padded to 40 + R frames (B, T + R, F), lengths (B,)."""
    rng = np.random.default_rng(seed)
    lengths = np.array(LENGTHS)
    x = rng.standard_normal((3, max(LENGTHS) + R, F)).astype(np.float32)
    for b, n in enumerate(lengths):
        x[b, n + R :] = 0.0
    return x, lengths
