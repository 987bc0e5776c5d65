"""How fast the embedded synthetic dataset (train/corpora/synth.py) generates, and how fast a small model learns it.

A probe, not the trainer: streamformer's Emformer (4 layers x 128, segment 16, right context 4, left context
32, time reduction 4) with a CTC head on words (one token per vocabulary word, as a sentencepiece model of 80
pieces gives) or letters, trained for a fixed wall-clock budget on the trainer's bucketed batches; dev WER by
greedy decoding every minute. Features: a numpy log-mel like torchaudio's RNN-T pipeline (n_fft 400, hop 160,
80 HTK mels, piecewise-linear log), normalized by mean and std over 500 training utterances.

    python benchmarks/synth_learnability.py --budget 480 --tokens words
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from streamformer.emformer import Emformer
from streamformer.train.corpora.prepare import Example, prepare_examples
from streamformer.train.corpora.synth import ALPHABET, VOCABULARY, SynthConfig, generate_split
from streamformer.train.loop.batches import batches, make_buckets


def _mel_filterbank(n_mels: int = 80, n_fft: int = 400, sample_rate: int = 16000) -> np.ndarray:
    def mel(f):
        return 2595 * np.log10(1 + f / 700)

    points = 700 * (10 ** (np.linspace(0, mel(sample_rate / 2), n_mels + 2) / 2595) - 1)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    bank = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        low, centre, high = points[i : i + 3]
        bank[i] = np.clip(
            np.minimum((freqs - low) / (centre - low), (high - freqs) / (high - centre)), 0, None
        )
    return bank


_BANK = _mel_filterbank()


def log_mel(waveform: np.ndarray) -> np.ndarray:
    """(N,) -> (N // 160 + 1, 80), as torchaudio's pipeline before global normalization."""
    padded = np.pad(waveform, (200, 200), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    power = np.abs(np.fft.rfft(frames * np.hanning(401)[:-1], axis=-1)) ** 2 * 32767.0**2
    mel = power @ _BANK.T
    return np.where(mel > np.e, np.log(np.maximum(mel, 1e-30)), mel / np.e).astype(np.float32)


class _Probe(nn.Module):
    num_tokens: int
    dim: int = 128
    layers: int = 4

    @nn.compact
    def __call__(self, features, lengths):
        batch, frames, channels = features.shape
        x = nn.Dense(self.dim)(features.reshape(batch, frames // 4, 4 * channels))
        encoder = Emformer(self.dim, 4, 4 * self.dim, self.layers, segment_length=16, right_context_length=4,
                           left_context_length=32)  # fmt: skip
        y, out_lengths = encoder(x, lengths // 4)
        return nn.Dense(self.num_tokens + 1)(nn.LayerNorm()(y)), out_lengths


def _edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = np.arange(len(hyp) + 1)
    for i, word in enumerate(ref, 1):
        new = row.copy()
        new[0] = i
        for j, other in enumerate(hyp, 1):
            new[j] = min(row[j] + 1, new[j - 1] + 1, row[j - 1] + (word != other))
        row = new
    return int(row[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=480.0, help="training wall-clock seconds")
    parser.add_argument("--train", type=int, default=2500, help="training utterances")
    parser.add_argument("--dev", type=int, default=300, help="dev utterances")
    parser.add_argument("--tokens", choices=("words", "letters"), default="words")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()

    begin = time.perf_counter()
    config = SynthConfig(seed=0)
    train_utts = generate_split(config, "train", args.train)
    dev_utts = generate_split(config, "dev", args.dev)
    generation = time.perf_counter() - begin
    audio_hours = sum(u.audio.size for u in train_utts + dev_utts) / 16000 / 3600
    count = args.train + args.dev
    print(f"generated {count} utterances ({audio_hours * 60:.1f} min of audio) in {generation:.1f} s"
          f" = {count / generation:.0f} utterances/s")  # fmt: skip

    symbols = list(VOCABULARY) if args.tokens == "words" else [" ", *ALPHABET]
    if args.tokens == "words":

        def encode(text):
            return [symbols.index(w) + 1 for w in text.split()]
    else:

        def encode(text):
            return [symbols.index(c) + 1 for c in text]

    begin = time.perf_counter()
    train = prepare_examples(train_utts, log_mel, encode)
    dev = prepare_examples(dev_utts, log_mel, encode)
    stacked = np.concatenate([e.features for e in train[:500]])
    mean, std = stacked.mean(0), stacked.std(0) + 1e-5
    train, dev = (
        [Example(e.id, e.text, (e.features - mean) / std, e.targets) for e in xs] for xs in (train, dev)
    )
    print(f"features in {time.perf_counter() - begin:.1f} s")
    buckets = make_buckets([e.features.shape[0] for e in train + dev], 4, frame_multiple=64)
    print("buckets (frames):", buckets)

    def epoch_batches(examples, epoch, shuffle=True):
        return batches(examples, args.batch_size, buckets, seed=0, epoch=epoch, shuffle=shuffle,
                       drop_last=shuffle, right_pad_frames=16)  # fmt: skip

    model = _Probe(len(symbols))
    first = next(epoch_batches(train, 0))
    params = model.init(jax.random.key(0), jnp.asarray(first.features), jnp.asarray(first.feature_lengths))
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, 150, 3000, args.lr * 0.1)
    optimizer = optax.chain(optax.clip_by_global_norm(5.0), optax.adamw(schedule, weight_decay=1e-3))
    opt_state = optimizer.init(params)

    def loss_fn(params, features, lengths, targets, target_lengths):
        logits, out_lengths = model.apply(params, features, lengths)
        logit_pad = (jnp.arange(logits.shape[1])[None] >= out_lengths[:, None]).astype(jnp.float32)
        label_pad = (jnp.arange(targets.shape[1])[None] >= target_lengths[:, None]).astype(jnp.float32)
        return optax.ctc_loss(logits, logit_pad, targets, label_pad).mean()

    @jax.jit
    def step(params, opt_state, features, lengths, targets, target_lengths):
        loss, grads = jax.value_and_grad(loss_fn)(params, features, lengths, targets, target_lengths)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def predict(params, features, lengths):
        logits, out_lengths = model.apply(params, features, lengths)
        return logits.argmax(-1), out_lengths

    def dev_wer(params) -> float:
        errors = words = 0
        text = {e.id: e.text for e in dev}
        for batch in epoch_batches(dev, 0, shuffle=False):
            best, out_lengths = (
                np.asarray(a) for a in predict(params, batch.features, batch.feature_lengths)
            )
            for row in np.flatnonzero(batch.valid):
                path = best[row, : out_lengths[row]]
                tokens = [t for i, t in enumerate(path) if t and (i == 0 or t != path[i - 1])]
                joined = (" " if args.tokens == "words" else "").join(symbols[t - 1] for t in tokens)
                ref = text[batch.ids[row]].split()
                errors += _edit_distance(ref, joined.split())
                words += len(ref)
        return errors / words

    begin = last = time.perf_counter()
    steps = epoch = 0
    loss = float("nan")
    while time.perf_counter() - begin < args.budget:
        for batch in epoch_batches(train, epoch):
            params, opt_state, loss = step(params, opt_state, batch.features, batch.feature_lengths,
                                           batch.targets, batch.target_lengths)  # fmt: skip
            steps += 1
            now = time.perf_counter()
            if now - last > 60:
                last = now
                wer = dev_wer(params)
                print(f"{now - begin:5.0f} s  step {steps:5d}  loss {float(loss):.3f}  dev WER {wer:.3f}")
            if now - begin > args.budget:
                break
        epoch += 1
    elapsed = time.perf_counter() - begin
    print(f"final: {elapsed:.0f} s, {steps} steps, {epoch} epochs, loss {float(loss):.3f}, "
          f"dev WER {dev_wer(params):.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
