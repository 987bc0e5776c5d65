"""streamformer: streaming speech models of the Emformer family in JAX/Flax.

torchaudio's Emformer, ConvEmformer and Emformer RNN-T as Flax Linen modules with numerical parity, streaming
as a ``lax.scan`` over segments with an explicit state pytree.
"""

from .conv_emformer import ConvEmformer
from .emformer import Emformer
from .streaming import EmformerState, reset_streams

__version__ = "0.1.0"

__all__ = ["ConvEmformer", "Emformer", "EmformerState", "reset_streams"]
