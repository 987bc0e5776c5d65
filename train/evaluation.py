"""Word and character error rates of a model on examples: greedy or beam search, offline or streaming, on one
process or gathered over several.

Offline decoding runs the whole utterance through ``RNNT.transcribe``; streaming feeds it segment by segment
(S frames plus R look-ahead frames) through ``StreamingDecoder``, as a live stream would arrive.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from streamformer import decoding
from streamformer.decoding import BeamSearch, GreedySearch, StreamingDecoder
from streamformer.text import Tokenizer
from streamformer.transducer import RNNT

from .corpora.prepare import Example
from .loop import multihost
from .loop.batches import batches

__all__ = ["edit_distance", "error_rates", "decode", "evaluate"]


def edit_distance(reference: Sequence, hypothesis: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions all cost 1)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict:
    """Corpus WER and CER: total edits over total reference words (characters, spaces included)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"hypotheses: expected {len(references)}, one per reference, got {len(hypotheses)}")
    pairs = list(zip(references, hypotheses, strict=True))
    word_errors = sum(edit_distance(r.split(), h.split()) for r, h in pairs)
    char_errors = sum(edit_distance(" ".join(r.split()), " ".join(h.split())) for r, h in pairs)
    words = sum(len(r.split()) for r in references)
    chars = sum(len(" ".join(r.split())) for r in references)
    return {
        "wer": word_errors / max(words, 1),
        "cer": char_errors / max(chars, 1),
        "words": words,
        "chars": chars,
        "word_errors": word_errors,
        "char_errors": char_errors,
        "utterances": len(references),
    }


def decode(
    model: RNNT,
    variables,
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    *,
    batch_size: int = 32,
    beam_width: int = 0,
    streaming: bool = False,
    bucket_frames: Sequence[int] | None = None,
) -> list[str]:
    """Transcripts of ``examples`` (in order), greedy (beam_width 0) or beam search, offline or streaming."""
    R = model.right_context_length
    longest = max(e.features.shape[0] for e in examples)
    buckets = list(bucket_frames or [])
    if not buckets or buckets[-1] < longest:
        buckets.append(model.layout.padded_frames(longest))
    blank = tokenizer.blank_id
    search = GreedySearch() if beam_width == 0 else BeamSearch(beam_width)
    decoder = StreamingDecoder(model, variables, search=search, blank=blank) if streaming else None
    texts: dict[str, str] = {}
    for batch in batches(examples, batch_size, buckets, shuffle=False, drop_last=False, right_pad_frames=R):
        if decoder is not None:
            state = decoder.init(batch_size)
            for chunk, chunk_lengths in model.layout.iter_chunks(batch.features, batch.feature_lengths):
                state = decoder.step(state, chunk, chunk_lengths)
            results = decoder.result(state)
        else:
            results = decoding.decode(
                model, variables, batch.features, batch.feature_lengths, search, blank=blank
            )
        for utterance_id, valid, hypotheses in zip(batch.ids, batch.valid, results, strict=True):
            if valid:
                texts[utterance_id] = tokenizer.decode(hypotheses[0].tokens)
    return [texts[e.id] for e in examples]


def evaluate(
    model: RNNT,
    variables,
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    *,
    batch_size: int = 32,
    beam_width: int = 0,
    streaming: bool = False,
    bucket_frames: Sequence[int] | None = None,
) -> tuple[dict, list[str]]:
    """(error rates (see ``error_rates``), hypotheses) of decoding ``examples``. With several processes each
    decodes its share and all get every transcript (in ``examples``' order) and the rates of the whole set."""
    options = dict(
        batch_size=batch_size, beam_width=beam_width, streaming=streaming, bucket_frames=bucket_frames
    )
    count = jax.process_count()
    if count == 1:
        hypotheses = decode(model, variables, examples, tokenizer, **options)
    else:
        mine = multihost.share(examples)
        here = decode(model, multihost.local_copy(variables), mine, tokenizer, **options) if mine else []
        hypotheses = [""] * len(examples)
        for index, texts in enumerate(multihost.gather_strings(here)):
            hypotheses[index::count] = texts
    rates = error_rates([e.text for e in examples], hypotheses)
    rates.update(
        search=f"beam{beam_width}" if beam_width else "greedy", mode="streaming" if streaming else "offline"
    )
    if count > 1:
        rates["processes"] = count
    return rates, hypotheses
