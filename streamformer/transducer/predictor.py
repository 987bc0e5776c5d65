"""torchaudio's prediction network (_Predictor): embedding, input layer norm, LSTM layers (torchaudio's
_CustomLSTM, as a ``lax.scan`` over tokens, dropout after each), linear, output layer norm.

Letters: B batch, U target tokens, H LSTM hidden size (symbol_embedding_dim), D encoding_dim.

Padding rule: positions at or beyond ``target_lengths[b]`` do not touch the state, so the returned state is the
state after each sequence's last valid token (torchaudio runs the LSTM over the padding as well). Their token
ids are ignored (read as 0). With no padding (lengths = U) this is exactly torchaudio.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from .. import _checks
from .._nn import Dtype, dense, embedding, layer_norm
from ..state import batch_field
from .config import TransducerPart

__all__ = ["CustomLSTM", "Predictor", "PredictorState"]


@flax.struct.dataclass
class PredictorState:
    """Prediction network state: each LSTM layer's hidden and cell vectors, layers stacked on the first axis.

    hidden: (num_lstm_layers, B, H) torchaudio's ``state[layer][0]``.
    cell: (num_lstm_layers, B, H) torchaudio's ``state[layer][1]``.
    """

    hidden: jax.Array = batch_field(1)
    cell: jax.Array = batch_field(1)

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[1]

    @classmethod
    def from_torchaudio(cls, state) -> PredictorState:
        """From torchaudio's ``List[List[Tensor]]`` ([[h, c] per layer], each (B, H))."""
        as_np = lambda t: np.asarray(t.detach().cpu().numpy() if hasattr(t, "detach") else t)  # noqa: E731
        return cls(
            hidden=jnp.stack([jnp.asarray(as_np(h)) for h, _ in state]),
            cell=jnp.stack([jnp.asarray(as_np(c)) for _, c in state]),
        )

    def to_torchaudio(self) -> list[list[np.ndarray]]:
        """To torchaudio's layout, as numpy arrays ([[h, c] per layer]); wrap them with torch.from_numpy."""
        hidden, cell = np.asarray(self.hidden), np.asarray(self.cell)
        return [[hidden[i], cell[i]] for i in range(hidden.shape[0])]


class _LSTMCell(nn.Module):
    """One step of torchaudio's _CustomLSTM: gates = g_norm(x2g(x) + p2g(h)), split input, forget, cell,
    output; c = c_norm(sigmoid(f) c + sigmoid(i) tanh(g)); h = sigmoid(o) tanh(c). Steps where ``valid`` is
    False leave the carry unchanged."""

    input_dim: int
    hidden_dim: int
    layer_norm: bool = False
    layer_norm_epsilon: float = 1e-5
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32
    weights: str = "float32"

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, weights=self.weights)
        self.x2g = dense(4 * self.hidden_dim, fan_in=self.input_dim, use_bias=not self.layer_norm, **kw)
        self.p2g = dense(4 * self.hidden_dim, fan_in=self.hidden_dim, use_bias=False, **kw)
        if self.layer_norm:
            norm = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype)
            self.c_norm = layer_norm(**norm)
            self.g_norm = layer_norm(**norm)

    def __call__(self, carry, inputs):
        hidden, cell = carry
        x, valid = inputs
        gates = self.x2g(x) + self.p2g(hidden)
        if self.layer_norm:
            gates = self.g_norm(gates)
        input_gate, forget_gate, cell_gate, output_gate = jnp.split(gates, 4, axis=-1)
        new_cell = nn.sigmoid(forget_gate) * cell + nn.sigmoid(input_gate) * jnp.tanh(cell_gate)
        if self.layer_norm:
            new_cell = self.c_norm(new_cell)
        new_hidden = nn.sigmoid(output_gate) * jnp.tanh(new_cell)
        keep = valid[:, None]
        carry = (
            jnp.where(keep, new_hidden.astype(hidden.dtype), hidden),
            jnp.where(keep, new_cell.astype(cell.dtype), cell),
        )
        return carry, new_hidden


#: torchaudio's _CustomLSTM as a ``lax.scan`` over the token axis:
#: ``layer((h, c), (x (B, U, E), valid (B, U)))`` returns ``((h, c), output (B, U, H))``.
#: Parameters: x2g, p2g, g_norm, c_norm as in torchaudio.
CustomLSTM = nn.scan(
    _LSTMCell,
    variable_broadcast="params",
    split_rngs={"params": False},
    in_axes=1,
    out_axes=1,
)


class Predictor(TransducerPart):
    """torchaudio's _Predictor of ``config``: embedding (num_symbols, symbol_embedding_dim), input layer norm,
    num_lstm_layers LSTM layers of symbol_embedding_dim units (dropout lstm_dropout after each), linear to
    encoding_dim, output layer norm."""

    num_symbols = property(lambda self: self.config.num_symbols)
    num_lstm_layers = property(lambda self: self.config.num_lstm_layers)
    #: The LSTM's hidden size, H (torchaudio's factories make it symbol_embedding_dim).
    lstm_hidden_dim = property(lambda self: self.config.symbol_embedding_dim)

    def setup(self):
        c, H = self.config, self.lstm_hidden_dim
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embedding = embedding(c.num_symbols, c.symbol_embedding_dim, weights=c.weights, **kw)
        self.input_layer_norm = layer_norm(**kw)
        self.lstm_layers = [
            CustomLSTM(
                c.symbol_embedding_dim if index == 0 else H,
                H,
                layer_norm=c.lstm_layer_norm,
                layer_norm_epsilon=c.lstm_layer_norm_epsilon,
                weights=c.weights,
                **kw,
            )
            for index in range(c.num_lstm_layers)
        ]
        self.dropout = nn.Dropout(c.lstm_dropout)
        self.linear = dense(c.encoding_dim, fan_in=H, weights=c.weights, **kw)
        self.output_layer_norm = layer_norm(**kw)

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> PredictorState:
        """Zeros, as torchaudio starts when state is None. Callable on the unbound module."""
        _checks.positive_int("batch_size", batch_size)
        zeros = jnp.zeros((self.num_lstm_layers, batch_size, self.lstm_hidden_dim), dtype)
        return PredictorState(hidden=zeros, cell=zeros)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, jax.Array]:
        return jnp.zeros((1, 2), jnp.int32), jnp.array([2], jnp.int32)

    def _check_state(self, state: PredictorState, batch_size: int) -> None:
        if not isinstance(state, PredictorState):
            raise TypeError(f"state: expected a PredictorState (or None), got {type(state).__name__}")
        want = (self.num_lstm_layers, batch_size, self.lstm_hidden_dim)
        for field in ("hidden", "cell"):
            got = getattr(state, field).shape
            if got != want:
                raise ValueError(
                    f"state: {field} has shape {got}, expected (num_lstm_layers, B, lstm_hidden_dim) = "
                    f"{want}: a state from another configuration or batch size"
                )

    def __call__(
        self,
        input: jax.Array,
        lengths: jax.Array,
        state: PredictorState | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, PredictorState]:
        """Prediction network over target sequences.

        Args:
            input: (B, U) int target tokens in [0, num_symbols) (checked at valid positions when concrete).
            lengths: (B,) valid tokens per sequence; tokens at or beyond lengths[b] leave the state alone.
            state: from a previous call, or None for zeros.
            deterministic: False applies dropout, drawing from the 'dropout' rng.

        Returns:
            output (B, U, output_dim), lengths (B,) (unchanged), and the state after each sequence's valid
            tokens.
        """
        _checks.array_shape("targets", input, (None, None), "(B, U)")
        _checks.integer_array("targets", input)
        B, U = input.shape
        _checks.array_shape("target_lengths", lengths, (B,), "(B,) matching targets' batch")
        _checks.integer_array("target_lengths", lengths)
        _checks.lengths_in_range("target_lengths", lengths, 0, U)
        if _checks.is_concrete(input) and _checks.is_concrete(lengths):
            tokens = np.asarray(input)[np.arange(U)[None, :] < np.asarray(lengths)[:, None]]
            bad = tokens[(tokens < 0) | (tokens >= self.num_symbols)]
            if bad.size:
                raise ValueError(
                    f"targets: expected values in [0, {self.num_symbols}), got {sorted(set(bad.tolist()))}"
                )
        dtype = self.dtype or jnp.float32
        state = self.init_state(B, dtype) if state is None else state
        self._check_state(state, B)

        valid = jnp.arange(U)[None, :] < jnp.asarray(lengths)[:, None]
        x = self.input_layer_norm(self.embedding(jnp.where(valid, input, 0)))
        hidden, cell = [], []
        for index, lstm in enumerate(self.lstm_layers):
            (h, c), x = lstm((state.hidden[index], state.cell[index]), (x, valid))
            x = self.dropout(x, deterministic=deterministic)
            hidden.append(h)
            cell.append(c)
        output = self.output_layer_norm(self.linear(x))
        return output, lengths, PredictorState(hidden=jnp.stack(hidden), cell=jnp.stack(cell))

    def step(
        self, tokens: jax.Array, state: PredictorState | None = None
    ) -> tuple[jax.Array, PredictorState]:
        """One token per sequence: tokens (B,) int in [0, num_symbols), state (None: zeros) -> output (B, D),
        the state after the token. The same computation as ``__call__`` on (B, 1) tokens, without dropout."""
        _checks.array_shape("tokens", tokens, (None,), "(B,)")
        output, _, state = self(tokens[:, None], jnp.ones(tokens.shape, jnp.int32), state, True)
        return output[:, 0], state
