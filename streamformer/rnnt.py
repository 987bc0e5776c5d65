"""The Emformer RNN-T (torchaudio.models.RNNT, emformer_rnnt_model, emformer_rnnt_base) in Flax, and the same
transducer around a ConvEmformer (conv_emformer_rnnt_model).

Three networks, named as torchaudio names them so that ``convert.from_torchaudio`` maps checkpoints with no
per-model code:

- ``transcriber``: input_linear (no bias), time_reduction (frame stacking), transformer (Emformer or
  ConvEmformer), output_linear, layer_norm.
- ``predictor``: embedding, input_layer_norm, lstm_layers_N (x2g, p2g, g_norm, c_norm), dropout, linear,
  output_layer_norm. The LSTMs run as a ``lax.scan`` over tokens.
- ``joiner``: linear(activation(source[:, :, None] + target[:, None])).

Letters: B batch, T source frames, U target tokens, V vocabulary (num_symbols), D features, S segment_length,
R right_context_length (both in input frames, before time reduction), H LSTM hidden size.

Padding rule (also where we differ from torchaudio): every sequence behaves as if it were alone.

- Sources: sequence b's ``source_lengths[b]`` valid frames are followed directly by its R right-context
  frames; what lies beyond is never read into a valid output (torchaudio's batched outputs depend on the
  padding).
- Targets: positions at or beyond ``target_lengths[b]`` do not touch the predictor state, so the returned
  state is the state after each sequence's last valid token (torchaudio runs the LSTM over the padding as
  well). Their token ids are ignored (read as 0). With no padding (lengths = U) this is exactly torchaudio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from . import _checks
from ._nn import Dtype, dense, layer_norm
from .emformer import Emformer
from .layout import SegmentLayout
from .state import batch_field
from .streaming import EmformerState

__all__ = [
    "RNNT",
    "PredictorState",
    "Predictor",
    "Joiner",
    "EmformerTranscriber",
    "ConvEmformerTranscriber",
    "TimeReduction",
    "TransducerConfig",
    "CustomLSTM",
    "emformer_rnnt_model",
    "emformer_rnnt_base",
    "conv_emformer_rnnt_model",
    "joiner_fn",
    "SimpleLossProjections",
    "with_simple_loss_projections",
    "pruned_joiner_fn",
]


# ----------------------------------------------------------------------------------------------------
# Predictor


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

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.x2g = dense(4 * self.hidden_dim, fan_in=self.input_dim, use_bias=not self.layer_norm, **kw)
        self.p2g = dense(4 * self.hidden_dim, fan_in=self.hidden_dim, use_bias=False, **kw)
        if self.layer_norm:
            self.c_norm = layer_norm(epsilon=self.layer_norm_epsilon, **kw)
            self.g_norm = layer_norm(epsilon=self.layer_norm_epsilon, **kw)

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


class Predictor(nn.Module):
    """torchaudio's _Predictor: embedding, input layer norm, LSTM layers (dropout after each), linear, output
    layer norm."""

    num_symbols: int
    output_dim: int
    symbol_embedding_dim: int
    num_lstm_layers: int
    lstm_hidden_dim: int
    lstm_layer_norm: bool = False
    lstm_layer_norm_epsilon: float = 1e-5
    lstm_dropout: float = 0.0
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        for name in (
            "num_symbols",
            "output_dim",
            "symbol_embedding_dim",
            "num_lstm_layers",
            "lstm_hidden_dim",
        ):
            _checks.positive_int(name, getattr(self, name))
        if not 0.0 <= self.lstm_dropout < 1.0:
            raise ValueError(f"lstm_dropout: expected a probability in [0, 1), got {self.lstm_dropout!r}")
        if not self.lstm_layer_norm_epsilon > 0:
            raise ValueError(
                f"lstm_layer_norm_epsilon: expected a positive number, got {self.lstm_layer_norm_epsilon!r}"
            )
        super().__post_init__()

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.embedding = nn.Embed(
            self.num_symbols, self.symbol_embedding_dim, embedding_init=nn.initializers.normal(1.0), **kw
        )
        self.input_layer_norm = layer_norm(**kw)
        self.lstm_layers = [
            CustomLSTM(
                self.symbol_embedding_dim if index == 0 else self.lstm_hidden_dim,
                self.lstm_hidden_dim,
                layer_norm=self.lstm_layer_norm,
                layer_norm_epsilon=self.lstm_layer_norm_epsilon,
                **kw,
            )
            for index in range(self.num_lstm_layers)
        ]
        self.dropout = nn.Dropout(self.lstm_dropout)
        self.linear = dense(self.output_dim, fan_in=self.lstm_hidden_dim, **kw)
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


# ----------------------------------------------------------------------------------------------------
# Joiner


class Joiner(nn.Module):
    """torchaudio's _Joiner: logits = linear(activation(source[:, :, None] + target[:, None]))."""

    input_dim: int
    output_dim: int
    activation: str = "relu"
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        _checks.one_of("activation", self.activation, ["relu", "tanh"])
        super().__post_init__()

    def setup(self):
        self.linear = dense(
            self.output_dim, fan_in=self.input_dim, dtype=self.dtype, param_dtype=self.param_dtype
        )

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
        joint = nn.relu(joint) if self.activation == "relu" else jnp.tanh(joint)
        return self.linear(joint)

    def pruned_logits(self, source_encodings: jax.Array, pruned_target_encodings: jax.Array) -> jax.Array:
        """source_encodings (B, T, D), pruned_target_encodings (B, T, K, D) (K target encodings per frame, as
        the pruned RNN-T loss gathers them) -> logits (B, T, K, V): the same joiner on those pairs only."""
        _checks.array_shape("source_encodings", source_encodings, (None, None, self.input_dim), "(B, T, D)")
        B, T = source_encodings.shape[:2]
        _checks.array_shape(
            "pruned_target_encodings", pruned_target_encodings, (B, T, None, self.input_dim), "(B, T, K, D)"
        )
        joint = source_encodings[:, :, None, :] + pruned_target_encodings
        joint = nn.relu(joint) if self.activation == "relu" else jnp.tanh(joint)
        return self.linear(joint)

    def __call__(self, source_encodings, source_lengths, target_encodings, target_lengths):
        """Returns (logits (B, T, U, V), source_lengths, target_lengths), as torchaudio's _Joiner.forward."""
        logits = self.logits(source_encodings, target_encodings)
        B = source_encodings.shape[0]
        _checks.array_shape("source_lengths", source_lengths, (B,), "(B,)")
        _checks.array_shape("target_lengths", target_lengths, (B,), "(B,)")
        _checks.lengths_in_range("source_lengths", source_lengths, 0, source_encodings.shape[1])
        _checks.lengths_in_range("target_lengths", target_lengths, 0, target_encodings.shape[1])
        return logits, source_lengths, target_lengths


# ----------------------------------------------------------------------------------------------------
# Transcriber


class TimeReduction(nn.Module):
    """torchaudio's _TimeReduction: drops the last T % stride frames and stacks ``stride`` consecutive frames,
    (B, T, D) -> (B, T // stride, D * stride); lengths // stride."""

    stride: int

    def __call__(self, input: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        B, T, D = input.shape
        frames = T - T % self.stride
        output = input[:, :frames].reshape(B, frames // self.stride, D * self.stride)
        return output, lengths // self.stride


@dataclasses.dataclass(frozen=True)
class TransducerConfig:
    """Every hyper-parameter of the Emformer RNN-T, carried down to the modules that use them.

    The fields are torchaudio's ``emformer_rnnt_model`` / ``conv_emformer_rnnt_model`` keywords, same names and
    meanings; the defaults are ``emformer_rnnt_base``'s (with 4097 symbols). ``transformer_kernel_size`` None
    builds an Emformer transcriber, an integer a ConvEmformer one (with ``transformer_conv_activation``; then
    ``transformer_activation`` is its feed-forward activation). segment_length and right_context_length count
    input frames and must be multiples of time_reduction_stride. The predictor's LSTM hidden size is
    symbol_embedding_dim.
    """

    input_dim: int = 80
    encoding_dim: int = 1024
    num_symbols: int = 4097
    segment_length: int = 16
    right_context_length: int = 4
    time_reduction_input_dim: int = 128
    time_reduction_stride: int = 4
    transformer_num_heads: int = 8
    transformer_ffn_dim: int = 2048
    transformer_num_layers: int = 20
    transformer_dropout: float = 0.1
    transformer_activation: str = "gelu"
    transformer_left_context_length: int = 30
    transformer_max_memory_size: int = 0
    transformer_weight_init_scale_strategy: str | None = "depthwise"
    transformer_tanh_on_mem: bool = True
    transformer_kernel_size: int | None = None
    transformer_conv_activation: str = "silu"
    symbol_embedding_dim: int = 512
    num_lstm_layers: int = 3
    lstm_layer_norm: bool = True
    lstm_layer_norm_epsilon: float = 1e-3
    lstm_dropout: float = 0.3
    joiner_activation: str = "relu"

    @property
    def encoder(self) -> str:
        """ "emformer" or "conv_emformer" (the transcriber's transformer)."""
        return "emformer" if self.transformer_kernel_size is None else "conv_emformer"

    @property
    def layout(self) -> SegmentLayout:
        """Segments and look-ahead in input frames (S, R): the chunks a stream delivers."""
        return SegmentLayout(self.segment_length, self.right_context_length)

    def replace(self, **changes) -> TransducerConfig:
        return dataclasses.replace(self, **changes)


class EmformerTranscriber(nn.Module):
    """torchaudio's _EmformerEncoder: input_linear (no bias), time_reduction, transformer (Emformer on
    segment_length // stride and right_context_length // stride reduced frames), output_linear, layer_norm.

    ``config.segment_length`` and ``config.right_context_length`` count input frames; both must be multiples
    of ``time_reduction_stride``, so that input chunks of segment_length + right_context_length frames map onto
    whole reduced segments (torchaudio floors silently, which breaks its own streaming for such
    configurations).
    """

    config: TransducerConfig
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        c = self.config
        if not isinstance(c, TransducerConfig):
            raise TypeError(f"config: expected a TransducerConfig, got {type(c).__name__}")
        for name in (
            "input_dim",
            "encoding_dim",
            "segment_length",
            "time_reduction_input_dim",
            "time_reduction_stride",
        ):
            _checks.positive_int(name, getattr(c, name))
        _checks.positive_int("right_context_length", c.right_context_length, minimum=0)
        stride = c.time_reduction_stride
        for name in ("segment_length", "right_context_length"):
            if getattr(c, name) % stride:
                raise ValueError(
                    f"{name}: expected a multiple of time_reduction_stride ({stride}), got {getattr(c, name)}"
                )
        self._make_transformer(parent=None)  # validates the transformer's arguments now, not at first call
        super().__post_init__()

    # -- configuration ---------------------------------------------------------------------------

    input_dim = property(lambda self: self.config.input_dim)
    output_dim = property(lambda self: self.config.encoding_dim)
    segment_length = property(lambda self: self.config.segment_length)
    right_context_length = property(lambda self: self.config.right_context_length)
    time_reduction_stride = property(lambda self: self.config.time_reduction_stride)

    @property
    def layout(self) -> SegmentLayout:
        return self.config.layout

    @nn.nowrap
    def _transformer_kwargs(self) -> dict[str, Any]:
        """The Emformer arguments of ``config``'s transformer_* fields, on reduced frames."""
        c, stride = self.config, self.config.time_reduction_stride
        return dict(
            input_dim=c.time_reduction_input_dim * stride,
            num_heads=c.transformer_num_heads,
            ffn_dim=c.transformer_ffn_dim,
            num_layers=c.transformer_num_layers,
            segment_length=c.segment_length // stride,
            dropout=c.transformer_dropout,
            left_context_length=c.transformer_left_context_length,
            right_context_length=c.right_context_length // stride,
            max_memory_size=c.transformer_max_memory_size,
            weight_init_scale_strategy=c.transformer_weight_init_scale_strategy,
            tanh_on_mem=c.transformer_tanh_on_mem,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )

    @nn.nowrap
    def _make_transformer(self, **kwargs) -> nn.Module:
        if self.config.transformer_kernel_size is not None:
            raise ValueError(
                "transformer_kernel_size: an Emformer transcriber has no convolution (expected None, got "
                f"{self.config.transformer_kernel_size!r}); use ConvEmformerTranscriber / conv_emformer_rnnt_model"
            )
        return Emformer(activation=self.config.transformer_activation, **self._transformer_kwargs(), **kwargs)

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        transformer_dim = c.time_reduction_input_dim * c.time_reduction_stride
        self.input_linear = dense(c.time_reduction_input_dim, fan_in=c.input_dim, use_bias=False, **kw)
        self.time_reduction = TimeReduction(c.time_reduction_stride)
        self.transformer = self._make_transformer()
        self.output_linear = dense(c.encoding_dim, fan_in=transformer_dim, **kw)
        self.layer_norm = layer_norm(**kw)

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> EmformerState:
        """A fresh streaming state (the transformer's). Callable on the unbound module."""
        return self._make_transformer(parent=None).init_state(batch_size, dtype)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, jax.Array]:
        S, R = self.segment_length, self.right_context_length
        return jnp.zeros((1, S + R, self.input_dim), jnp.float32), jnp.array([S], jnp.int32)

    def _check(self, input, lengths, frames_what: str) -> None:
        _checks.array_shape("sources", input, (None, None, self.input_dim), f"(B, {frames_what}, input_dim)")
        _checks.floating_array("sources", input)
        _checks.array_shape("source_lengths", lengths, (input.shape[0],), "(B,) matching sources' batch")
        _checks.integer_array("source_lengths", lengths)

    def _check_utterance(self, input, lengths) -> None:
        self._check(input, lengths, "T + right_context_length")
        R, stride = self.right_context_length, self.time_reduction_stride
        if input.shape[1] // stride <= R // stride:
            raise ValueError(
                f"sources: expected at least right_context_length + time_reduction_stride = {R + stride} "
                f"frames, got {input.shape[1]}"
            )
        _checks.lengths_in_range("source_lengths", lengths, 0, input.shape[1] - R)

    def _reduce(self, input: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.time_reduction(self.input_linear(input), lengths)

    def _output(self, x: jax.Array) -> jax.Array:
        return self.layer_norm(self.output_linear(x))

    # -- methods ---------------------------------------------------------------------------------

    def __call__(self, input: jax.Array, lengths: jax.Array, deterministic: bool = True):
        """Training and offline forward.

        Args:
            input: (B, T + R, input_dim) frames, sequence b's R right-context frames right after its valid
                frames.
            lengths: (B,) valid frames per sequence (0 <= lengths <= T), right context excluded.
            deterministic: False applies dropout ('dropout' rng).

        Returns:
            output (B, (T + R) // stride - R // stride, output_dim), output lengths (B,) = lengths // stride.
        """
        self._check_utterance(input, lengths)
        x, reduced_lengths = self._reduce(input, lengths)
        x, out_lengths = self.transformer(x, reduced_lengths, deterministic)
        return self._output(x), out_lengths

    def infer(self, input: jax.Array, lengths: jax.Array, state: EmformerState | None = None):
        """One streaming step.

        Args:
            input: (B, S + R, input_dim) the next segment of every stream and its right context: a stream's v
                valid frames first, then anything up to S frames, then the R frames that follow its valid
                frames (torchaudio's layout).
            lengths: (B,) valid frames in ``input``, right context included (torchaudio's convention): v + R,
                or 0 for a stream with nothing new (its state is kept).
            state: from the previous step, or None for fresh streams.

        A partial chunk's last v % stride valid frames do not fill a reduced frame: time reduction drops them
        from the segment and they open its right context, as in the offline forward, so streaming equals
        ``__call__`` for every length.

        Returns:
            output (B, S // stride, output_dim), output lengths (B,) =
            max(lengths // stride - R // stride, 0), and the new state.
        """
        S, R = self.segment_length, self.right_context_length
        self._check(input, lengths, "segment_length + right_context_length")
        if input.shape[1] != S + R:
            raise ValueError(
                f"sources: expected segment_length + right_context_length = {S + R} frames per step, "
                f"got {input.shape[1]}"
            )
        _checks.lengths_in_range("source_lengths", lengths, 0, S + R)
        input = self.layout.regroup_chunk(input, lengths, self.time_reduction_stride)
        x, reduced_lengths = self._reduce(input, lengths)
        x, out_lengths, state = self.transformer.infer(x, reduced_lengths, state)
        return self._output(x), out_lengths, state

    def stream(self, input: jax.Array, lengths: jax.Array, state: EmformerState | None = None):
        """Whole utterances streamed segment by segment (one ``lax.scan`` over the transformer's step); the
        arguments and outputs of ``__call__``, plus the state after each stream's last segment."""
        self._check_utterance(input, lengths)
        x, reduced_lengths = self._reduce(input, lengths)
        x, out_lengths, state = self.transformer.stream(x, reduced_lengths, state)
        return self._output(x), out_lengths, state


class ConvEmformerTranscriber(EmformerTranscriber):
    """EmformerTranscriber with a ConvEmformer as its transformer (``config.transformer_activation`` is the
    ConvEmformer's ``ffn_activation``; ``config.transformer_kernel_size`` its depthwise convolution kernel
    size, required; ``config.transformer_conv_activation`` its convolution module activation)."""

    @nn.nowrap
    def _make_transformer(self, **kwargs) -> nn.Module:
        from .conv_emformer import ConvEmformer

        c = self.config
        _checks.positive_int("transformer_kernel_size", c.transformer_kernel_size)
        return ConvEmformer(
            kernel_size=c.transformer_kernel_size,
            ffn_activation=c.transformer_activation,
            conv_activation=c.transformer_conv_activation,
            **self._transformer_kwargs(),
            **kwargs,
        )


# ----------------------------------------------------------------------------------------------------
# Simple-loss projections (training only)


class SimpleLossProjections(nn.Module):
    """The two projections the pruned RNN-T loss's simple loss needs (icefall's simple_am_proj and
    simple_lm_proj): encoder output -> V (``am_proj``) and predictor output -> V (``lm_proj``). Used only in
    training; torchaudio has no counterpart (``convert`` leaves them out of torchaudio state dicts)."""

    input_dim: int
    num_symbols: int
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        kw = dict(fan_in=self.input_dim, dtype=self.dtype, param_dtype=self.param_dtype)
        self.am_proj = dense(self.num_symbols, **kw)
        self.lm_proj = dense(self.num_symbols, **kw)

    def __call__(
        self, source_encodings: jax.Array, target_encodings: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """(B, T, D), (B, U + 1, D) -> am_logits (B, T, V), lm_logits (B, U + 1, V)."""
        return self.am_proj(source_encodings), self.lm_proj(target_encodings)


# ----------------------------------------------------------------------------------------------------
# The transducer


class RNNT(nn.Module):
    """Recurrent neural network transducer: transcriber, predictor and joiner, as torchaudio.models.RNNT.

    Build with a factory (``emformer_rnnt_model``, ``emformer_rnnt_base``, ``conv_emformer_rnnt_model``) and
    call methods through ``model.apply(variables, ..., method=...)``:

    - ``__call__`` (training): logits (B, T', U, V), source and target lengths, predictor state;
    - ``transcribe`` (offline), ``transcribe_streaming`` (one segment), ``transcribe_stream`` (a whole
      utterance as one scan over segments), ``predict``, ``join``, ``joint_logits`` (the joiner without
      lengths);
    - on the unbound module: ``init_transcriber_state``, ``init_predictor_state``, ``example_inputs``.

    Example:
        >>> model = emformer_rnnt_base(num_symbols=4097)
        >>> variables = model.init(jax.random.key(0), *model.example_inputs())
        >>> chunk = jnp.zeros((1, 20, 80))                        # S + R = 16 + 4 feature frames
        >>> state = model.init_transcriber_state(1)
        >>> encodings, lengths, state = model.apply(
        ...     variables, chunk, jnp.array([20]), state, method="transcribe_streaming")   # (1, 4, 1024)
    """

    transcriber: EmformerTranscriber
    predictor: Predictor
    joiner: Joiner
    #: Training-only projections for the pruned RNN-T loss (``with_simple_loss_projections``); None: absent.
    simple_loss: SimpleLossProjections | None = None

    # -- configuration and state -----------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: TransducerConfig, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32
    ) -> RNNT:
        """The transducer of ``config`` (what the factories build)."""
        if not isinstance(config, TransducerConfig):
            raise TypeError(f"config: expected a TransducerConfig, got {type(config).__name__}")
        return _transducer(config, dtype, param_dtype)

    @property
    def config(self) -> TransducerConfig:
        """The transducer's hyper-parameters (the transcriber's config: the factories build all three parts
        from it)."""
        return self.transcriber.config

    @property
    def layout(self) -> SegmentLayout:
        """Segments and look-ahead in input frames: the chunks ``transcribe_streaming`` takes."""
        return self.transcriber.layout

    @property
    def num_symbols(self) -> int:
        return self.predictor.num_symbols

    @property
    def segment_length(self) -> int:
        """S, input frames per streaming step (before right context)."""
        return self.transcriber.segment_length

    @property
    def right_context_length(self) -> int:
        """R, look-ahead input frames per streaming step."""
        return self.transcriber.right_context_length

    @nn.nowrap
    def init_transcriber_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> EmformerState:
        """A fresh transcriber (Emformer) streaming state for ``batch_size`` streams."""
        return self.transcriber.init_state(batch_size, dtype)

    @nn.nowrap
    def init_predictor_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> PredictorState:
        """The predictor's zero state (what ``None`` means) for ``batch_size`` sequences."""
        return self.predictor.init_state(batch_size, dtype)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, ...]:
        """Arguments for ``model.init(rng, *model.example_inputs())``: one segment and two target tokens."""
        sources, source_lengths = self.transcriber.example_inputs()
        targets, target_lengths = self.predictor.example_inputs()
        return sources, source_lengths, targets, target_lengths

    # -- methods ---------------------------------------------------------------------------------

    def __call__(
        self,
        sources: jax.Array,
        source_lengths: jax.Array,
        targets: jax.Array,
        target_lengths: jax.Array,
        predictor_state: PredictorState | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, jax.Array, PredictorState]:
        """Training forward.

        Args:
            sources: (B, T + R, input_dim) feature frames right-padded with the right context.
            source_lengths: (B,) valid frames per sequence, right context excluded.
            targets: (B, U) target tokens in [0, num_symbols).
            target_lengths: (B,) valid tokens per sequence.
            predictor_state: from a previous call, or None for zeros.
            deterministic: False applies dropout ('dropout' rng).

        Returns:
            logits (B, T', U, V) with T' = (T + R) // stride - R // stride, source lengths (B,) (// stride),
            target lengths (B,), and the predictor state.
        """
        # The predictor first: its checks are the cheaper ones to fail on.
        target_encodings, target_lengths, predictor_state = self.predictor(
            targets, target_lengths, predictor_state, deterministic
        )
        source_encodings, source_lengths = self.transcriber(sources, source_lengths, deterministic)
        logits, source_lengths, target_lengths = self.joiner(
            source_encodings, source_lengths, target_encodings, target_lengths
        )
        if self.simple_loss is not None and self.is_initializing():
            self.simple_loss(source_encodings, target_encodings)  # creates their parameters in model.init
        return logits, source_lengths, target_lengths, predictor_state

    def transcribe(
        self, sources: jax.Array, source_lengths: jax.Array, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """Offline transcription network: sources (B, T + R, input_dim), source_lengths (B,) (right context
        excluded) -> encodings (B, T', D), lengths (B,). deterministic=False applies dropout ('dropout' rng),
        for training."""
        return self.transcriber(sources, source_lengths, deterministic)

    def transcribe_streaming(
        self, sources: jax.Array, source_lengths: jax.Array, state: EmformerState | None
    ) -> tuple[jax.Array, jax.Array, EmformerState]:
        """One streaming step: sources (B, S + R, input_dim), source_lengths (B,) valid frames in the chunk
        with the right context (torchaudio's convention), state (None: fresh) -> encodings
        (B, S // stride, D), lengths (B,), new state."""
        return self.transcriber.infer(sources, source_lengths, state)

    def transcribe_in_segments(
        self, sources: jax.Array, source_lengths: jax.Array, state: EmformerState | None = None
    ) -> tuple[jax.Array, jax.Array, EmformerState]:
        """Whole utterances streamed as one ``lax.scan`` over streaming steps: the arguments and outputs of
        ``transcribe``, plus the final state. Equals looping ``transcribe_streaming`` over the chunks of
        ``model.layout.chunks``. (The first version called it ``transcribe_stream``, still an alias.)"""
        return self.transcriber.stream(sources, source_lengths, state)

    transcribe_stream = transcribe_in_segments

    def predict(
        self,
        targets: jax.Array,
        target_lengths: jax.Array,
        state: PredictorState | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, jax.Array, PredictorState]:
        """Prediction network: targets (B, U), target_lengths (B,), state (None: zeros) -> encodings
        (B, U, D), lengths (B,), state after each sequence's valid tokens. deterministic=False applies
        dropout ('dropout' rng), for training."""
        return self.predictor(targets, target_lengths, state, deterministic)

    def predict_step(
        self, tokens: jax.Array, state: PredictorState | None = None
    ) -> tuple[jax.Array, PredictorState]:
        """The prediction network on one token per sequence: tokens (B,) int, state (None: zeros) -> output
        (B, D) and the state after the token (what a decoder calls once per emitted token)."""
        return self.predictor.step(tokens, state)

    def join(
        self,
        source_encodings: jax.Array,
        source_lengths: jax.Array,
        target_encodings: jax.Array,
        target_lengths: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Joint network: (B, T, D) and (B, U, D) encodings -> logits (B, T, U, V), source and target
        lengths."""
        return self.joiner(source_encodings, source_lengths, target_encodings, target_lengths)

    def joint_logits(self, source_encodings: jax.Array, target_encodings: jax.Array) -> jax.Array:
        """The joiner without lengths: (B, T, D), (B, U, D) -> logits (B, T, U, V)."""
        return self.joiner.logits(source_encodings, target_encodings)

    def joint_logits_pruned(
        self, source_encodings: jax.Array, pruned_target_encodings: jax.Array
    ) -> jax.Array:
        """The joiner on K gathered targets per frame: (B, T, D), (B, T, K, D) -> logits (B, T, K, V)."""
        return self.joiner.pruned_logits(source_encodings, pruned_target_encodings)

    def simple_logits(
        self, source_encodings: jax.Array, target_encodings: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """The simple-loss projections: (B, T, D), (B, U + 1, D) -> am_logits (B, T, V), lm_logits
        (B, U + 1, V). Only on a model from ``with_simple_loss_projections``."""
        if self.simple_loss is None:
            raise ValueError(
                "simple_logits: this RNNT has no simple-loss projections; build it with "
                "with_simple_loss_projections(model)"
            )
        return self.simple_loss(source_encodings, target_encodings)


def joiner_fn(model: RNNT, variables) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A pure function ``(source_encodings (B, Tc, D), target_encodings (B, U, D)) -> logits (B, Tc, U, V)``
    of ``model``'s joiner with ``variables`` (traced parameters work: use it inside jit and grad), e.g. for a
    memory-efficient RNN-T loss that calls the joiner on chunks of frames."""

    def join(source_encodings: jax.Array, target_encodings: jax.Array) -> jax.Array:
        return model.apply(variables, source_encodings, target_encodings, method=RNNT.joint_logits)

    return join


def pruned_joiner_fn(model: RNNT, variables) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """A pure function ``(source_encodings (B, T, D), pruned_target_encodings (B, T, K, D)) -> logits
    (B, T, K, V)`` of ``model``'s joiner with ``variables``: the joiner argument of
    ``streamformer.rnnt_loss_pruned`` and ``streamformer.pruned_rnnt_loss``."""

    def join(source_encodings: jax.Array, pruned_target_encodings: jax.Array) -> jax.Array:
        return model.apply(
            variables, source_encodings, pruned_target_encodings, method=RNNT.joint_logits_pruned
        )

    return join


def with_simple_loss_projections(model: RNNT) -> RNNT:
    """``model`` with the pruned RNN-T loss's two projections (encoder and predictor output -> V) added as
    ``simple_loss`` (``model.init`` creates their parameters; ``RNNT.simple_logits`` applies them). Every
    other parameter, and what ``convert.to_torchaudio`` writes, is unchanged."""
    if not isinstance(model, RNNT):
        raise TypeError(f"model: expected an RNNT, got {type(model).__name__}")
    if model.simple_loss is not None:
        return model
    joiner = model.joiner
    projections = SimpleLossProjections(
        joiner.input_dim, joiner.output_dim, dtype=joiner.dtype, param_dtype=joiner.param_dtype, parent=None
    )
    return model.clone(simple_loss=projections)


# ----------------------------------------------------------------------------------------------------
# Factories


def _transducer(config: TransducerConfig, dtype: Dtype, param_dtype: Dtype) -> RNNT:
    """The transducer of ``config``: the one place where the config becomes modules."""
    transcriber_class = EmformerTranscriber if config.encoder == "emformer" else ConvEmformerTranscriber
    transcriber = transcriber_class(config, dtype=dtype, param_dtype=param_dtype, parent=None)
    predictor = Predictor(
        num_symbols=config.num_symbols,
        output_dim=config.encoding_dim,
        symbol_embedding_dim=config.symbol_embedding_dim,
        num_lstm_layers=config.num_lstm_layers,
        lstm_hidden_dim=config.symbol_embedding_dim,
        lstm_layer_norm=config.lstm_layer_norm,
        lstm_layer_norm_epsilon=config.lstm_layer_norm_epsilon,
        lstm_dropout=config.lstm_dropout,
        dtype=dtype,
        param_dtype=param_dtype,
        parent=None,
    )
    joiner = Joiner(
        config.encoding_dim,
        config.num_symbols,
        config.joiner_activation,
        dtype=dtype,
        param_dtype=param_dtype,
        parent=None,
    )
    return RNNT(transcriber=transcriber, predictor=predictor, joiner=joiner, parent=None)


def emformer_rnnt_model(
    *,
    input_dim: int,
    encoding_dim: int,
    num_symbols: int,
    segment_length: int,
    right_context_length: int,
    time_reduction_input_dim: int,
    time_reduction_stride: int,
    transformer_num_heads: int,
    transformer_ffn_dim: int,
    transformer_num_layers: int,
    transformer_dropout: float,
    transformer_activation: str,
    transformer_left_context_length: int,
    transformer_max_memory_size: int,
    transformer_weight_init_scale_strategy: str | None,
    transformer_tanh_on_mem: bool,
    symbol_embedding_dim: int,
    num_lstm_layers: int,
    lstm_layer_norm: bool,
    lstm_layer_norm_epsilon: float,
    lstm_dropout: float,
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> RNNT:
    """Builds the Emformer RNN-T: torchaudio.models.emformer_rnnt_model's keywords, meanings and parameter
    names, then ``dtype`` (computation) and ``param_dtype``.

    segment_length and right_context_length count input frames and must be multiples of time_reduction_stride
    (the Emformer runs on segment_length // stride and right_context_length // stride reduced frames, as in
    torchaudio). The predictor's LSTM hidden size is symbol_embedding_dim; the joiner's activation is relu.
    The keywords become a ``TransducerConfig`` (``model.config``).
    """
    arguments = locals()
    dtype, param_dtype = arguments.pop("dtype"), arguments.pop("param_dtype")
    return _transducer(TransducerConfig(**arguments), dtype, param_dtype)


def emformer_rnnt_base(num_symbols: int, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32) -> RNNT:
    """torchaudio.models.emformer_rnnt_base: the configuration of torchaudio's LibriSpeech Emformer RNN-T
    (80 mel features, 1024-dim encodings, 20 Emformer layers, segments of 16 + 4 frames, stride 4)."""
    return emformer_rnnt_model(
        input_dim=80,
        encoding_dim=1024,
        num_symbols=num_symbols,
        segment_length=16,
        right_context_length=4,
        time_reduction_input_dim=128,
        time_reduction_stride=4,
        transformer_num_heads=8,
        transformer_ffn_dim=2048,
        transformer_num_layers=20,
        transformer_dropout=0.1,
        transformer_activation="gelu",
        transformer_left_context_length=30,
        transformer_max_memory_size=0,
        transformer_weight_init_scale_strategy="depthwise",
        transformer_tanh_on_mem=True,
        symbol_embedding_dim=512,
        num_lstm_layers=3,
        lstm_layer_norm=True,
        lstm_layer_norm_epsilon=1e-3,
        lstm_dropout=0.3,
        dtype=dtype,
        param_dtype=param_dtype,
    )


def conv_emformer_rnnt_model(
    *,
    input_dim: int,
    encoding_dim: int,
    num_symbols: int,
    segment_length: int,
    right_context_length: int,
    time_reduction_input_dim: int,
    time_reduction_stride: int,
    transformer_num_heads: int,
    transformer_ffn_dim: int,
    transformer_num_layers: int,
    transformer_kernel_size: int,
    transformer_dropout: float,
    transformer_activation: str,
    transformer_left_context_length: int,
    transformer_max_memory_size: int,
    transformer_weight_init_scale_strategy: str | None,
    transformer_tanh_on_mem: bool,
    symbol_embedding_dim: int,
    num_lstm_layers: int,
    lstm_layer_norm: bool,
    lstm_layer_norm_epsilon: float,
    lstm_dropout: float,
    transformer_conv_activation: str = "silu",
    dtype: Dtype = None,
    param_dtype: Dtype = jnp.float32,
) -> RNNT:
    """The Emformer RNN-T with a ConvEmformer transcriber (torchaudio.prototype.models.ConvEmformer).

    emformer_rnnt_model's keywords plus ``transformer_kernel_size`` (the ConvEmformer's ``kernel_size``) and
    ``transformer_conv_activation`` (its ``conv_activation``, default "silu"); ``transformer_activation`` is
    the ConvEmformer's ``ffn_activation``. The torchaudio counterpart is torchaudio's RNNT whose
    ``transcriber.transformer`` is that ConvEmformer: the parameter names are the same with the ConvEmformer's
    layers under ``transcriber.transformer``.
    """
    arguments = locals()
    dtype, param_dtype = arguments.pop("dtype"), arguments.pop("param_dtype")
    _checks.positive_int("transformer_kernel_size", transformer_kernel_size)
    return _transducer(TransducerConfig(**arguments), dtype, param_dtype)
