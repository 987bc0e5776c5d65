"""torchaudio's joint network (_Joiner): logits = linear(activation(source[:, :, None] + target[:, None])).

Letters: B batch, T source frames, U target tokens, K target positions kept per frame (pruned loss), D
encoding_dim, V num_symbols.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import _checks
from .._nn import dense
from .config import TransducerPart

__all__ = ["Joiner"]


class Joiner(TransducerPart):
    """torchaudio's _Joiner of ``config``: logits = linear(joiner_activation(source[:, :, None] +
    target[:, None])), encoding_dim D -> num_symbols V."""

    #: D, the encodings' dimension.
    input_dim = property(lambda self: self.config.encoding_dim)
    #: V, the vocabulary (blank included).
    output_dim = property(lambda self: self.config.num_symbols)

    def setup(self):
        self.linear = dense(
            self.output_dim,
            fan_in=self.input_dim,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            weights=self.config.weights,
        )

    def _activation(self, joint: jax.Array) -> jax.Array:
        return nn.relu(joint) if self.config.joiner_activation == "relu" else jnp.tanh(joint)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, ...]:
        src, tgt = jnp.zeros((1, 1, self.input_dim)), jnp.zeros((1, 1, self.input_dim))
        return src, jnp.array([1]), tgt, jnp.array([1])

    def logits(self, source_encodings: jax.Array, target_encodings: jax.Array) -> jax.Array:
        """source_encodings (B, T, D), target_encodings (B, U, D) -> logits (B, T, U, V)."""
        _checks.array_shape("source_encodings", source_encodings, (None, None, self.input_dim), "(B, T, D)")
        B = source_encodings.shape[0]
        _checks.array_shape("target_encodings", target_encodings, (B, None, self.input_dim), "(B, U, D)")
        joint = source_encodings[:, :, None, :] + target_encodings[:, None, :, :]
        return self.linear(self._activation(joint))

    def pruned_logits(self, source_encodings: jax.Array, pruned_target_encodings: jax.Array) -> jax.Array:
        """source_encodings (B, T, D), pruned_target_encodings (B, T, K, D) (K target encodings per frame, as
        the pruned RNN-T loss gathers them) -> logits (B, T, K, V): the same joiner on those pairs only."""
        _checks.array_shape("source_encodings", source_encodings, (None, None, self.input_dim), "(B, T, D)")
        B, T = source_encodings.shape[:2]
        _checks.array_shape(
            "pruned_target_encodings", pruned_target_encodings, (B, T, None, self.input_dim), "(B, T, K, D)"
        )
        joint = source_encodings[:, :, None, :] + pruned_target_encodings
        return self.linear(self._activation(joint))

    def __call__(self, source_encodings, source_lengths, target_encodings, target_lengths):
        """Returns (logits (B, T, U, V), source_lengths, target_lengths), as torchaudio's _Joiner.forward."""
        logits = self.logits(source_encodings, target_encodings)
        B = source_encodings.shape[0]
        _checks.array_shape("source_lengths", source_lengths, (B,), "(B,)")
        _checks.array_shape("target_lengths", target_lengths, (B,), "(B,)")
        _checks.lengths_in_range("source_lengths", source_lengths, 0, source_encodings.shape[1])
        _checks.lengths_in_range("target_lengths", target_lengths, 0, target_encodings.shape[1])
        return logits, source_lengths, target_lengths
