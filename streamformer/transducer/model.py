"""The transducer (torchaudio.models.RNNT): transcriber, predictor and joiner, the pure joiner functions and
simple-loss projections the RNN-T losses use, and an auxiliary CTC head for training.

The three networks are named as torchaudio names them, so that ``convert.from_torchaudio`` maps checkpoints with
no per-model code. Letters: B batch, T source frames, U target tokens, V vocabulary (num_symbols), D features,
S segment_length, R right_context_length (both in input frames, before time reduction).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from .._nn import Dtype, dense
from ..layout import SegmentLayout
from ..streaming import EmformerState
from .config import TransducerConfig
from .joiner import Joiner
from .predictor import Predictor, PredictorState
from .transcriber import ConvEmformerTranscriber, EmformerTranscriber

__all__ = [
    "RNNT",
    "CTCHead",
    "SimpleLossProjections",
    "joiner_fn",
    "pruned_joiner_fn",
    "with_ctc_head",
    "with_simple_loss_projections",
]


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

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, ...]:
        example = jnp.zeros((1, 1, self.input_dim))
        return example, example


class CTCHead(nn.Module):
    """An auxiliary CTC output on the transcriber's encodings: (B, T, D) -> logits (B, T, V) over the
    transducer's own symbols, blank at the transducer's blank id. Trained beside the transducer (icefall's
    transducers train with one: it speeds up learning the alignment); the transducer's outputs do not use it
    and torchaudio has no counterpart (``convert.to_torchaudio`` leaves it out, with a warning)."""

    input_dim: int
    num_symbols: int
    dtype: Dtype = None
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.linear = dense(
            self.num_symbols, fan_in=self.input_dim, dtype=self.dtype, param_dtype=self.param_dtype
        )

    def __call__(self, source_encodings: jax.Array) -> jax.Array:
        """(B, T, D) -> logits (B, T, V)."""
        return self.linear(source_encodings)

    @nn.nowrap
    def example_inputs(self) -> tuple[jax.Array, ...]:
        return (jnp.zeros((1, 1, self.input_dim)),)


class RNNT(nn.Module):
    """Recurrent neural network transducer: transcriber, predictor and joiner, as torchaudio.models.RNNT.

    Build with a factory (``emformer_rnnt_model``, ``emformer_rnnt_base``, ``conv_emformer_rnnt_model``) and
    call methods through ``model.apply(variables, ..., method=...)``:

    - ``__call__`` (training): logits (B, T', U, V), source and target lengths, predictor state;
    - ``transcribe`` (offline), ``transcribe_streaming`` (one segment), ``transcribe_in_segments`` (a whole
      utterance as one scan over segments), ``predict``, ``predict_step``, ``join``, ``joint_logits`` (the
      joiner without lengths);
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
    #: Training-only auxiliary CTC head on the transcriber's encodings (``with_ctc_head``); None: absent.
    ctc_head: CTCHead | None = None

    # -- configuration and state -----------------------------------------------------------------

    @classmethod
    def from_config(
        cls, config: TransducerConfig, *, dtype: Dtype = None, param_dtype: Dtype = jnp.float32
    ) -> RNNT:
        """The transducer of ``config`` (what the factories build): the one place where the config becomes
        modules, each of which receives it."""
        if not isinstance(config, TransducerConfig):
            raise TypeError(f"config: expected a TransducerConfig, got {type(config).__name__}")
        parts = dict(config=config, dtype=dtype, param_dtype=param_dtype, parent=None)
        transcriber_class = EmformerTranscriber if config.encoder == "emformer" else ConvEmformerTranscriber
        return cls(
            transcriber=transcriber_class(**parts),
            predictor=Predictor(**parts),
            joiner=Joiner(**parts),
            parent=None,
        )

    @property
    def config(self) -> TransducerConfig:
        """The transducer's hyper-parameters (``from_config`` gives all three parts this one config)."""
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
        if self.ctc_head is not None and self.is_initializing():
            self.ctc_head(source_encodings)
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
        ``model.layout.chunks``."""
        return self.transcriber.stream(sources, source_lengths, state)

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

    def ctc_logits(self, source_encodings: jax.Array) -> jax.Array:
        """The auxiliary CTC head: transcriber encodings (B, T, D) -> logits (B, T, V). Only on a model from
        ``with_ctc_head``."""
        if self.ctc_head is None:
            raise ValueError("ctc_logits: this RNNT has no CTC head; build it with with_ctc_head(model)")
        return self.ctc_head(source_encodings)


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
    return _with_training_part(model, "simple_loss", SimpleLossProjections)


def with_ctc_head(model: RNNT) -> RNNT:
    """``model`` with an auxiliary CTC head on its transcriber's encodings added as ``ctc_head`` (its
    parameters live beside the transducer's, under "ctc_head"; ``RNNT.ctc_logits`` applies it). Every other
    parameter, and what ``convert.to_torchaudio`` writes, is unchanged."""
    return _with_training_part(model, "ctc_head", CTCHead)


def _with_training_part(model: RNNT, field: str, part: type[nn.Module]) -> RNNT:
    """``model`` with a training-only ``part`` (encodings of dimension D -> V, the joiner's sizes and dtypes)
    as its ``field``; ``model`` itself when it has one already."""
    if not isinstance(model, RNNT):
        raise TypeError(f"model: expected an RNNT, got {type(model).__name__}")
    if getattr(model, field) is not None:
        return model
    joiner = model.joiner
    module = part(
        joiner.input_dim, joiner.output_dim, dtype=joiner.dtype, param_dtype=joiner.param_dtype, parent=None
    )
    return model.clone(**{field: module})
