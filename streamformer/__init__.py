"""streamformer: streaming speech models of the Emformer family in JAX/Flax."""

__version__ = "0.1.0"
