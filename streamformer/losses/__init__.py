"""RNN-T losses in JAX: the full loss (torchaudio's semantics), its chunked form, and the pruned loss.

- :mod:`~streamformer.losses.rnnt`: :func:`rnnt_loss` (the full (B, T, U + 1, V) joint) and
  :func:`rnnt_loss_from_encodings` (the joint a chunk of frames at a time).
- :mod:`~streamformer.losses.simple`: :func:`rnnt_loss_simple` (an additive joiner, no joint) and
  :func:`rnnt_prune_ranges` (the label windows its occupations pick).
- :mod:`~streamformer.losses.pruned`: :func:`rnnt_loss_pruned` (the joiner on those windows only) and
  :func:`pruned_rnnt_loss` (the three steps, as icefall trains with them).
- :mod:`~streamformer.losses.lattice`: the lattice code they share (forward-backward, arc log-probabilities,
  closed-form logits gradients, the chunked recompute-in-backward join); :mod:`~streamformer.losses.checks`:
  their shared argument checks.
"""

from .pruned import pruned_rnnt_loss, rnnt_loss_pruned
from .rnnt import rnnt_loss, rnnt_loss_from_encodings
from .simple import rnnt_loss_simple, rnnt_prune_ranges

__all__ = [
    "pruned_rnnt_loss",
    "rnnt_loss",
    "rnnt_loss_from_encodings",
    "rnnt_loss_pruned",
    "rnnt_loss_simple",
    "rnnt_prune_ranges",
]
