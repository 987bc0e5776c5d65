"""streamformer: streaming speech models of the Emformer family in JAX/Flax.

torchaudio's Emformer, ConvEmformer and Emformer RNN-T as Flax Linen modules with numerical parity, streaming
as a ``lax.scan`` over segments with an explicit state pytree, the RNN-T loss, batched jit decoding
(``streamformer.decoding``) and quantised inference (``quantize``: int8 or bfloat16 weights). Front end and
text: ``streamformer.features``, ``streamformer.text``.
"""

from .attention import EmformerLayerState
from .conv_emformer import ConvEmformer, ConvEmformerLayerState
from .emformer import Emformer
from .encoder_config import EncoderConfig
from .layout import ChunkFeeder, SegmentLayout
from .losses import (
    pruned_rnnt_loss,
    rnnt_loss,
    rnnt_loss_from_encodings,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_prune_ranges,
)
from .quantization import is_quantized, quantize
from .state import batch_axes, reset_streams, select_streams, take_streams
from .streaming import EmformerState
from .transducer import (
    RNNT,
    PredictorState,
    TransducerConfig,
    conv_emformer_rnnt_model,
    emformer_rnnt_base,
    emformer_rnnt_model,
    joiner_fn,
    pruned_joiner_fn,
    with_ctc_head,
    with_simple_loss_projections,
)

__version__ = "0.1.0"

__all__ = [
    "RNNT",
    "ChunkFeeder",
    "ConvEmformer",
    "ConvEmformerLayerState",
    "Emformer",
    "EmformerLayerState",
    "EmformerState",
    "EncoderConfig",
    "SegmentLayout",
    "TransducerConfig",
    "batch_axes",
    "PredictorState",
    "conv_emformer_rnnt_model",
    "emformer_rnnt_base",
    "emformer_rnnt_model",
    "is_quantized",
    "joiner_fn",
    "pruned_joiner_fn",
    "pruned_rnnt_loss",
    "quantize",
    "reset_streams",
    "rnnt_loss",
    "rnnt_loss_from_encodings",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_prune_ranges",
    "select_streams",
    "take_streams",
    "with_ctc_head",
    "with_simple_loss_projections",
]
