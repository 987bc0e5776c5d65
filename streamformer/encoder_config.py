"""The hyper-parameters of an Emformer or ConvEmformer encoder, as one frozen value.

``Emformer`` and ``ConvEmformer`` keep torchaudio's constructors (their fields); ``encoder.config`` gathers those
fields into an ``EncoderConfig``, validated once here, and that one value is what every layer, its attention and
its convolution module receive. The transducer derives its encoder's config from ``TransducerConfig`` in one
place (``TransducerConfig.encoder_config``).
"""

from __future__ import annotations

import dataclasses
import math

from . import _checks
from ._nn import ACTIVATIONS, WEIGHT_FORMATS
from .layout import SegmentLayout

__all__ = ["EncoderConfig"]


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """An Emformer (``kernel_size`` None) or ConvEmformer (``kernel_size`` an int) encoder.

    The fields are torchaudio's Emformer arguments, same names, meanings and defaults, plus ConvEmformer's
    ``kernel_size`` and ``conv_activation``; ``activation`` is the feed-forward activation (ConvEmformer's
    ``ffn_activation``); ``weights`` how the matrices are stored: "float32" (training, conversion), or
    "bfloat16" or "int8" for inference (``streamformer.quantize`` makes those). Letters: D input_dim,
    S segment_length, L left_context_length, R right_context_length, M max_memory_size, K kernel_size.
    """

    input_dim: int
    num_heads: int
    ffn_dim: int
    num_layers: int
    segment_length: int
    dropout: float = 0.0
    activation: str = "relu"
    left_context_length: int = 0
    right_context_length: int = 0
    max_memory_size: int = 0
    weight_init_scale_strategy: str | None = "depthwise"
    tanh_on_mem: bool = False
    negative_inf: float = -1e8
    kernel_size: int | None = None
    conv_activation: str = "silu"
    weights: str = "float32"

    def __post_init__(self):
        for name in ("input_dim", "num_heads", "ffn_dim", "num_layers", "segment_length"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("left_context_length", "right_context_length", "max_memory_size"):
            _checks.positive_int(name, getattr(self, name), minimum=0)
        if self.input_dim % self.num_heads:
            raise ValueError(
                f"input_dim: expected a multiple of num_heads ({self.num_heads}), got {self.input_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        _checks.one_of(
            "weight_init_scale_strategy", self.weight_init_scale_strategy, ["depthwise", "constant", None]
        )
        if not self.negative_inf < 0:
            raise ValueError(f"negative_inf: expected a large negative number, got {self.negative_inf!r}")
        _checks.one_of("activation", self.activation, list(ACTIVATIONS))
        if self.kernel_size is not None:
            _checks.positive_int("kernel_size", self.kernel_size)
        _checks.one_of("conv_activation", self.conv_activation, list(ACTIVATIONS))
        _checks.one_of("weights", self.weights, WEIGHT_FORMATS)

    @property
    def is_conv_emformer(self) -> bool:
        """True for a ConvEmformer (a convolution module in every layer)."""
        return self.kernel_size is not None

    @property
    def layout(self) -> SegmentLayout:
        """The segment layout (S, R) of this encoder."""
        return SegmentLayout(self.segment_length, self.right_context_length)

    def weight_init_gain(self, layer_index: int) -> float | None:
        """The xavier_uniform gain of layer ``layer_index``'s query and key/value projections (None: PyTorch's
        default initialisation), as torchaudio's weight_init_scale_strategy sets it."""
        if self.weight_init_scale_strategy == "depthwise":
            return 1.0 / math.sqrt(layer_index + 1)
        if self.weight_init_scale_strategy == "constant":
            return 1.0 / math.sqrt(2)
        return None
