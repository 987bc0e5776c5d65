"""Decoding a trained tiny model (``python -m train main``'s workdir): test WER of greedy, torchaudio-style
beam search and modified beam search at the same width, offline and streaming; and the error of word start
times derived from the searches' timestamps against the synthesiser's true word starts.

The synthesiser (train/corpora/synth.py) gives each word's true start and end (``Utterance.word_spans``).

Run: ``python benchmarks/trained_decoding.py --workdir runs/main [--beam 4] [--limit N]``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from _trained import load_run, score

from streamformer.train.corpora import synth


def true_word_starts(config: synth.SynthConfig, split: str, index: int) -> tuple[list[str], list[float]]:
    """(words, start seconds) of ``synth.synthesize(config, split, index)``, from its true word spans."""
    utterance = synth.synthesize(config, split, index)
    return utterance.text.split(), [start for start, _ in utterance.word_spans]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--endpoint", type=int, default=0, help="only: N test utterances joined by silence")
    args = parser.parse_args()
    run, model, variables, step = load_run(args.workdir)
    if args.endpoint:
        return endpoint_check(run, model, variables, args.endpoint)
    examples = run.prepare("test")[: args.limit or None]
    config = synth.SynthConfig(seed=run.config.data.synth_seed)
    truth = [
        true_word_starts(config, "test", int(e.id.split("-")[-1]) + 1000 * int(e.id.split("-")[1]))
        for e in examples
    ]
    for (words, _), e in zip(truth, examples, strict=True):
        assert " ".join(words) == e.text, (words, e.text)  # the replay recovers the transcript
    print(
        f"workdir {args.workdir}, step {step}, {len(examples)} test utterances; load {os.getloadavg()[0]:.1f}"
    )
    for search in ("greedy", "beam", "modified_beam"):
        for streaming in (False, True):
            rates, results, seconds = score(
                model, variables, run.tokenizer, examples, search=search, beam=args.beam, streaming=streaming
            )
            errors = []
            for (words, starts), r in zip(truth, results, strict=True):
                if [w["word"] for w in r["words"]] == words:
                    errors += [abs(w["start"] - s) for w, s in zip(r["words"], starts, strict=True)]
            errors = np.array(errors) * 1000
            signed = []
            for (words, starts), r in zip(truth, results, strict=True):
                if [w["word"] for w in r["words"]] == words:
                    signed += [w["start"] - s for w, s in zip(r["words"], starts, strict=True)]
            signed = np.array(signed) * 1000
            name = (
                f"{search}{'' if search == 'greedy' else args.beam} {'streaming' if streaming else 'offline'}"
            )
            print(
                f"{name:24s} WER {100 * rates['wer']:5.2f}%  CER {100 * rates['cer']:5.2f}%  ({seconds:5.1f} s)  "
                f"word starts on {errors.size} words of correct utterances: |error| median {np.median(errors):.0f} ms, "
                f"p90 {np.percentile(errors, 90):.0f} ms, max {errors.max():.0f} ms; signed median "
                f"{np.median(signed):+.0f} ms",
                flush=True,
            )


def endpoint_check(run, model, variables, count: int, silence_seconds: float = 1.5) -> None:
    """``count`` test utterances joined by ``silence_seconds`` of silence, streamed with endpoint_step
    (trailing silence of 0.8 s after a token ends an utterance; the encoder state carries on): the cuts and
    each piece's text against the utterance decoded alone (offline greedy)."""
    from streamformer.decoding import (
        EndpointConfig,
        EndpointRule,
        GreedySearch,
        StreamingDecoder,
        endpoint_step,
        greedy_search,
    )
    from streamformer.train.corpora.prepare import log_mel_features, normalize

    config = synth.SynthConfig(seed=run.config.data.synth_seed)
    utterances = [synth.synthesize(config, "test", i) for i in range(count)]
    gap = np.zeros(int(16000 * silence_seconds), np.float32)
    audio = np.concatenate([part for u in utterances for part in (u.audio, gap)])
    features = normalize(log_mel_features([audio])[0], run.stats)
    alone_features = [normalize(f, run.stats) for f in log_mel_features([u.audio for u in utterances])]
    R, S = model.right_context_length, model.segment_length
    alone = []
    for f in alone_features:
        x = np.zeros((1, f.shape[0] + R, f.shape[1]), np.float32)
        x[0, : f.shape[0]] = f
        (best,) = greedy_search(model, variables, x, np.array([f.shape[0]]), blank=run.tokenizer.blank_id)[0]
        alone.append(run.tokenizer.decode(best.tokens))
    decoder = StreamingDecoder(model, variables, search=GreedySearch(), blank=run.tokenizer.blank_id)
    endpoint = EndpointConfig((EndpointRule(True, 0.8, 0.0),))
    state = decoder.init(1)
    pieces, ends = [], []
    chunks = model.layout.iter_chunks(features[None], np.array([features.shape[0]]))
    for i, (chunk, lengths) in enumerate(chunks):
        state = decoder.step(state, chunk, lengths)
        state, finished = endpoint_step(decoder, state, endpoint)
        for _, hypotheses, _ in finished:
            pieces.append(run.tokenizer.decode(hypotheses[0].tokens))
            ends.append((i + 1) * S / 100)
    boundaries = np.cumsum([(u.audio.size + gap.size) / 16000 for u in utterances])
    print(
        f"{count} utterances + {silence_seconds} s silences, {audio.size / 16000:.1f} s; endpoint rule: 0.8 s "
        f"trailing silence after a token; load {os.getloadavg()[0]:.1f}"
    )
    for k, u in enumerate(utterances):
        piece = pieces[k] if k < len(pieces) else None
        cut = ends[k] if k < len(ends) else None
        speech_end = boundaries[k] - silence_seconds
        print(
            f"  {k}: reference {u.text!r}; alone {alone[k]!r}; piece {piece!r}; cut at {cut} s "
            f"(speech ends {speech_end:.2f} s, next starts {boundaries[k]:.2f} s)"
        )
    print(
        f"pieces: {len(pieces)} for {count} utterances; equal to alone: "
        f"{sum(p == a for p, a in zip(pieces, alone))}"
    )


if __name__ == "__main__":
    main()
