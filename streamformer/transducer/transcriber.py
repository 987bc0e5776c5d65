"""torchaudio's transcription network (_EmformerEncoder): input_linear (no bias), time_reduction (frame
stacking), transformer (Emformer or ConvEmformer on reduced frames), output_linear, layer_norm.

Letters: B batch, T source frames, S segment_length, R right_context_length (both in input frames, before time
reduction), D features.

Padding rule (also where we differ from torchaudio): sequence b's ``source_lengths[b]`` valid frames are
followed directly by its R right-context frames; what lies beyond is never read into a valid output
(torchaudio's batched outputs depend on the padding).
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from .. import _checks
from .._nn import Dtype, dense, layer_norm
from ..conv_emformer import ConvEmformer
from ..emformer import Emformer
from ..encoder_config import EncoderConfig
from ..layout import SegmentLayout
from ..streaming import EmformerState, StreamingEncoder
from .config import TransducerPart

__all__ = ["ConvEmformerTranscriber", "EmformerTranscriber", "TimeReduction", "encoder_for"]


def encoder_for(config: EncoderConfig, **module_arguments) -> StreamingEncoder:
    """The Emformer (``config.kernel_size`` None) or ConvEmformer of ``config`` (``module_arguments``: dtype,
    param_dtype, name, parent)."""
    encoder_class = ConvEmformer if config.is_conv_emformer else Emformer
    return encoder_class.from_config(config, **module_arguments)


class TimeReduction(nn.Module):
    """torchaudio's _TimeReduction: drops the last T % stride frames and stacks ``stride`` consecutive frames,
    (B, T, D) -> (B, T // stride, D * stride); lengths // stride."""

    stride: int

    def __call__(self, input: jax.Array, lengths: jax.Array) -> tuple[jax.Array, jax.Array]:
        B, T, D = input.shape
        frames = T - T % self.stride
        output = input[:, :frames].reshape(B, frames // self.stride, D * self.stride)
        return output, lengths // self.stride


class EmformerTranscriber(TransducerPart):
    """torchaudio's _EmformerEncoder: input_linear (no bias), time_reduction, transformer (Emformer on
    segment_length // stride and right_context_length // stride reduced frames), output_linear, layer_norm.

    ``config.segment_length`` and ``config.right_context_length`` count input frames; both must be multiples
    of ``time_reduction_stride``, so that input chunks of segment_length + right_context_length frames map onto
    whole reduced segments (torchaudio floors silently, which breaks its own streaming for such
    configurations).
    """

    #: The encoder kind this transcriber holds (TransducerConfig.encoder).
    encoder_kind: ClassVar[str] = "emformer"

    def __post_init__(self):
        super().__post_init__()
        c = self.config
        if c.encoder != self.encoder_kind:
            raise ValueError(
                "transformer_kernel_size: an Emformer transcriber has no convolution (expected None, got "
                f"{c.transformer_kernel_size!r}); use ConvEmformerTranscriber / conv_emformer_rnnt_model"
                if self.encoder_kind == "emformer"
                else "transformer_kernel_size: a ConvEmformer transcriber needs the convolution's kernel size "
                "(expected an integer >= 1, got None); use EmformerTranscriber / emformer_rnnt_model"
            )

    # -- configuration ---------------------------------------------------------------------------

    input_dim = property(lambda self: self.config.input_dim)
    output_dim = property(lambda self: self.config.encoding_dim)
    segment_length = property(lambda self: self.config.segment_length)
    right_context_length = property(lambda self: self.config.right_context_length)
    time_reduction_stride = property(lambda self: self.config.time_reduction_stride)

    @property
    def layout(self) -> SegmentLayout:
        return self.config.layout

    def setup(self):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        transformer_dim = c.time_reduction_input_dim * c.time_reduction_stride
        self.input_linear = dense(
            c.time_reduction_input_dim, fan_in=c.input_dim, use_bias=False, weights=c.weights, **kw
        )
        self.time_reduction = TimeReduction(c.time_reduction_stride)
        self.transformer = encoder_for(c.encoder_config, **kw)
        self.output_linear = dense(c.encoding_dim, fan_in=transformer_dim, weights=c.weights, **kw)
        self.layer_norm = layer_norm(**kw)

    @nn.nowrap
    def init_state(self, batch_size: int, dtype: Dtype = jnp.float32) -> EmformerState:
        """A fresh streaming state (the transformer's). Callable on the unbound module."""
        return encoder_for(self.config.encoder_config, parent=None).init_state(batch_size, dtype)

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

    encoder_kind: ClassVar[str] = "conv_emformer"
