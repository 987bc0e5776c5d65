"""SentencePiece tokenization for the Emformer RNN-T, as torchaudio's LibriSpeech recipe and bundle do it.

- :func:`train_bpe` trains a BPE model with the settings of torchaudio's ``examples/asr/emformer_rnnt``
  ``train_spm.py`` (character coverage 1.0, bos 0, pad 1, eos 2, unk 3).
- :class:`Tokenizer` encodes transcripts into RNN-T targets. The RNN-T's blank is the id after the last piece:
  ``blank_id = vocab_size`` and the model has ``num_symbols = vocab_size + 1`` outputs (4096 pieces, blank
  4096, 4097 symbols in EMFORMER_RNNT_BASE_LIBRISPEECH).
- :class:`TokenProcessor` turns a hypothesis's tokens back into text exactly as torchaudio's
  ``_SentencePieceTokenProcessor`` does.

sentencepiece is an optional dependency (extra ``train``), imported when first needed.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .io import atomic_write_bytes

# torchaudio's train_spm.py ids.
BOS_ID, PAD_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
WORD_BOUNDARY = "\u2581"


def _sentencepiece():
    try:
        import sentencepiece
    except ImportError as error:  # optional dependency
        raise ImportError(
            "streamformer.text needs sentencepiece: pip install 'streamformer[train]' (or sentencepiece)"
        ) from error
    return sentencepiece


def train_bpe(
    transcripts: Iterable[str],
    out_path: str | os.PathLike,
    vocab_size: int,
    *,
    character_coverage: float = 1.0,
    **options: Any,
) -> str:
    """Trains a SentencePiece BPE model on ``transcripts`` and writes it to ``out_path`` atomically.

    Settings as torchaudio's recipe: model_type "bpe", all sentences read, bos 0,
    pad 1, eos 2, unk 3. The 4 special pieces count in ``vocab_size``. Normalize the transcripts first the
    way the model will see them (torchaudio's LibriSpeech recipe lowercases them).

    Args:
        transcripts: one transcript per item.
        out_path: the .model file to write.
        vocab_size: pieces in the model (the RNN-T then has vocab_size + 1 symbols, blank last).
        character_coverage: share of characters the vocabulary covers (1.0: all seen in training).
        **options: further sentencepiece trainer options, overriding the above (e.g. ``minloglevel=2``).

    Returns:
        ``out_path`` as a string.
    """
    spm = _sentencepiece()
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 5:
        raise ValueError(f"vocab_size: expected an int >= 5 (4 special pieces + 1), got {vocab_size!r}")
    if isinstance(transcripts, str):
        raise TypeError("transcripts: expected an iterable of transcripts, got a single str")
    sentences = [str(t) for t in transcripts if str(t).strip()]
    if not sentences:
        raise ValueError("transcripts: expected at least one non-empty transcript, got none")
    settings = dict(
        model_type="bpe",
        vocab_size=vocab_size,
        input_sentence_size=0,  # all sentences (torchaudio passes -1, which sentencepiece 0.2 rejects)
        character_coverage=character_coverage,
        bos_id=BOS_ID,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        minloglevel=2,
    )
    settings.update(options)
    writer = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_writer=writer, **settings)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"train_bpe: sentencepiece could not train the model: {error}") from error
    atomic_write_bytes(out_path, writer.getvalue())
    return os.fspath(out_path)


def _load_processor(model_path: str | os.PathLike):
    spm = _sentencepiece()
    path = os.fspath(model_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model_path: no SentencePiece model at {path!r}")
    return spm.SentencePieceProcessor(model_file=path)


class Tokenizer:
    """A SentencePiece model as RNN-T targets: ids in [0, vocab_size), blank = vocab_size.

    Args:
        model_path: a SentencePiece .model file (e.g. from :func:`train_bpe`, or torchaudio's
            spm_bpe_4096_librispeech.model).
    """

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = os.fspath(model_path)
        self.sp_model = _load_processor(model_path)

    @property
    def vocab_size(self) -> int:
        """V, pieces in the SentencePiece model."""
        return int(self.sp_model.get_piece_size())

    @property
    def blank_id(self) -> int:
        """The RNN-T blank: the id after the last piece (vocab_size)."""
        return self.vocab_size

    @property
    def num_symbols(self) -> int:
        """Outputs of the RNN-T joiner: vocab_size + 1 (blank included)."""
        return self.vocab_size + 1

    @property
    def unk_id(self) -> int:
        return int(self.sp_model.unk_id())

    @property
    def pad_id(self) -> int:
        """The model's pad piece (-1 when it has none)."""
        return int(self.sp_model.pad_id())

    @property
    def bos_id(self) -> int:
        return int(self.sp_model.bos_id())

    @property
    def eos_id(self) -> int:
        return int(self.sp_model.eos_id())

    def _unknown_characters(self, text: str) -> list[str]:
        """Characters of ``text`` that encode to unk, in order of first appearance."""
        try:
            pieces = self.sp_model.encode(text, out_type="proto").pieces
            surfaces = [p.surface for p in pieces if p.id == self.unk_id]
        except Exception:  # no protobuf support: test characters one by one
            surfaces = [c for c in text if self.unk_id in self.sp_model.encode(c, out_type=int)]
        seen: dict[str, None] = {}
        for surface in surfaces:
            for char in surface:
                seen.setdefault(char, None)
        return list(seen) or ["?"]

    def encode(self, text: str) -> list[int]:
        """Token ids of one transcript (no bos, eos or blank).

        Raises:
            ValueError: when the model cannot represent some characters (sentencepiece would map them to
                unk); the message names them.
        """
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        ids = [int(i) for i in self.sp_model.encode(text, out_type=int)]
        if self.unk_id >= 0 and self.unk_id in ids:
            chars = self._unknown_characters(text)
            raise ValueError(
                f"text: expected characters the tokenizer can represent, got {', '.join(map(repr, chars))} "
                f"in {text[:80]!r} (they would encode to unk id {self.unk_id}; normalize the transcript, "
                f"e.g. lowercase it, or retrain the tokenizer)"
            )
        return ids

    def encode_batch(
        self, texts: Sequence[str], *, pad_to: int | None = None, pad_value: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """RNN-T targets of a batch of transcripts.

        Args:
            texts: B transcripts.
            pad_to: U, the padded width (default: the longest encoding); a fixed width keeps shapes static
                under jit. Must be at least the longest encoding.
            pad_value: id written past each target's length (default: the model's pad id, as torchaudio's
                recipe pads, or 0 if the model has none). Never read by the loss.

        Returns:
            targets: (B, U) int32 ids, padded with ``pad_value``.
            lengths: (B,) int32 target lengths.
        """
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise TypeError(f"texts: expected a sequence of str, got {type(texts).__name__}")
        if len(texts) == 0:
            raise ValueError("texts: expected at least one transcript, got an empty sequence")
        encoded = [self.encode(text) for text in texts]
        longest = max(len(ids) for ids in encoded)
        width = longest if pad_to is None else pad_to
        if isinstance(width, bool) or not isinstance(width, int) or width < longest:
            raise ValueError(f"pad_to: expected an int >= the longest target ({longest}), got {pad_to!r}")
        if pad_value is None:
            pad_value = self.pad_id if self.pad_id >= 0 else 0
        targets = np.full((len(encoded), width), pad_value, dtype=np.int32)
        for row, ids in zip(targets, encoded, strict=True):
            row[: len(ids)] = ids
        lengths = np.array([len(ids) for ids in encoded], dtype=np.int32)
        return targets, lengths

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of token ids via SentencePiece's decoder; blank ids are dropped.

        Raises:
            ValueError: for ids outside [0, vocab_size].
        """
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        bad = [i for i in ids if not 0 <= i <= self.blank_id]
        if bad:
            raise ValueError(
                f"ids: expected values in [0, {self.blank_id}] (blank {self.blank_id}), got {bad}"
            )
        return self.sp_model.decode([i for i in ids if i != self.blank_id])


class TokenProcessor:
    """torchaudio's ``_SentencePieceTokenProcessor``: a hypothesis's tokens to text.

    Exactly as torchaudio 2.8: the first token is dropped (RNNTBeamSearch's hypotheses start with the blank
    they were primed with), then unk, eos and pad ids (bos is kept), the remaining pieces are joined, the
    word-boundary mark "\u2581" becomes a space, and with ``lstrip`` the leading whitespace goes.

    Args:
        sp_model_path: a SentencePiece .model file.
    """

    def __init__(self, sp_model_path: str | os.PathLike):
        self.sp_model = _load_processor(sp_model_path)
        self.post_process_remove_list = {
            self.sp_model.unk_id(),
            self.sp_model.eos_id(),
            self.sp_model.pad_id(),
        }

    def __call__(self, tokens: Sequence[int], lstrip: bool = True) -> str:
        """Args: tokens: a hypothesis's token ids, the leading blank included. Returns: the text."""
        kept = [int(t) for t in list(tokens)[1:] if int(t) not in self.post_process_remove_list]
        size = self.sp_model.get_piece_size()
        bad = [t for t in kept if not 0 <= t < size]
        if bad:
            raise ValueError(
                f"tokens: expected ids in [0, {size}) after the first token (the blank comes only first), "
                f"got {bad}"
            )
        text = "".join(self.sp_model.id_to_piece(kept)).replace(WORD_BOUNDARY, " ")
        return text.lstrip() if lstrip else text
