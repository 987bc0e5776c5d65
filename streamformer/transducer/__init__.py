"""The Emformer RNN-T (torchaudio.models.RNNT, emformer_rnnt_model, emformer_rnnt_base) in Flax, and the same
transducer around a ConvEmformer (conv_emformer_rnnt_model).

- ``config``: ``TransducerConfig``, every hyper-parameter, from which the model is built;
- ``factories``: torchaudio's factories (their keywords become a ``TransducerConfig``);
- ``transcriber``, ``predictor``, ``joiner``: the three networks, each receiving the config;
- ``model``: ``RNNT``, the pure joiner functions, the pruned loss's simple-loss projections and the auxiliary
  CTC head.
"""

from .config import TransducerConfig
from .factories import conv_emformer_rnnt_model, emformer_rnnt_base, emformer_rnnt_model
from .joiner import Joiner
from .model import (
    RNNT,
    CTCHead,
    SimpleLossProjections,
    joiner_fn,
    pruned_joiner_fn,
    with_ctc_head,
    with_simple_loss_projections,
)
from .predictor import CustomLSTM, Predictor, PredictorState
from .transcriber import ConvEmformerTranscriber, EmformerTranscriber, TimeReduction, encoder_for

__all__ = [
    "RNNT",
    "CTCHead",
    "ConvEmformerTranscriber",
    "CustomLSTM",
    "EmformerTranscriber",
    "Joiner",
    "Predictor",
    "PredictorState",
    "SimpleLossProjections",
    "TimeReduction",
    "TransducerConfig",
    "conv_emformer_rnnt_model",
    "emformer_rnnt_base",
    "emformer_rnnt_model",
    "encoder_for",
    "joiner_fn",
    "pruned_joiner_fn",
    "with_ctc_head",
    "with_simple_loss_projections",
]
