"""Do the pruned RNN-T loss's ranges hold the best alignment? (issue 11, item 2)

On a model trained with ``optim.loss=pruned``, for every test utterance: the Viterbi path (the single best
alignment) of the FULL RNN-T lattice, against the pruning ranges that training would choose for that
utterance from the simple loss (the model's simple-loss projections, the run's smoothing scales
``optim.lm_only_scale`` / ``optim.am_only_scale``, ``rnnt_prune_ranges`` with ``optim.prune_range``).

A path visits lattice nodes (t, u): label u + 1 emitted at (t, u) moves to (t, u + 1), blank at (t, u) to
(t + 1, u); it starts at (0, 0) and ends with the blank at (T_b - 1, U_b). Frame t is *covered* when every
node (t, u) the path visits on frame t lies in that frame's window, ``start[t] <= u < start[t] + K``.

Printed: the fraction of covered frames over all valid frames, the fraction of the path's lattice nodes
inside the windows, the fraction of utterances covered on every frame, how far outside the windows the
uncovered nodes lie (label positions below the window's start, negative, or above its end, positive), and the
share of the full lattice's probability mass that the windows keep (``exp(full_loss - pruned_loss)`` per
utterance: the pruned loss sums the alignments inside the windows only). The same figures for the utterances
with U + 1 > K alone (on the others every window holds every label position, so coverage is trivial), and for
a control that ignores the model: windows centred on the diagonal from (0, 0) to (T - 1, U).

Run (from the repository root)::

    python benchmarks/pruned_ranges_coverage.py --workdir /work/runs/pruned [--limit N] [--prune-range K]
        [--split test] [--batch-size 16] [--step S]

Shape letters: B batch, T encoder frames (after time reduction), U labels (U + 1 label positions), V
symbols (blank included), D encoding width, K prune range (window size).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from streamformer.losses import rnnt_loss, rnnt_loss_pruned, rnnt_loss_simple, rnnt_prune_ranges
from streamformer.train.corpora import audio as data_lib
from streamformer.transducer import RNNT, pruned_joiner_fn


def make_lattice_fn(model: RNNT, optim, blank: int, prune_range: int):
    """A jitted ``(variables, features, feature_lengths, targets, target_lengths) -> dict`` of, per
    utterance: the full lattice's arc log-probabilities ``blank_lp`` and ``label_lp`` (B, T, U + 1), the
    window starts ``start`` (B, T), the encoder's ``source_lengths`` (B,), and the ``full`` and ``pruned``
    RNN-T losses (B,), computed as the trainer computes them (``streamformer.train.loop.step.make_loss_fn``)."""

    def lattice(variables, features, feature_lengths, targets, target_lengths):
        sources, source_lengths = model.apply(variables, features, feature_lengths, method=RNNT.transcribe)
        source_lengths = jnp.maximum(source_lengths, 1)
        prefixed = jnp.concatenate([jnp.full_like(targets[:, :1], blank), targets], axis=1)  # (B, U + 1)
        target_encodings, _, _ = model.apply(
            variables, prefixed, target_lengths + 1, method=RNNT.predict
        )  # (B, U + 1, D)

        # The full lattice: joiner on every (t, u), log-softmaxed over V.
        logits = model.apply(variables, sources, target_encodings, method=RNNT.joint_logits)  # (B, T, U+1, V)
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        blank_lp = log_probs[..., blank]  # (B, T, U + 1)
        next_label = jnp.concatenate([targets, jnp.zeros_like(targets[:, :1])], axis=1)  # (B, U + 1)
        label_lp = jnp.take_along_axis(log_probs, next_label[:, None, :, None], axis=-1)[..., 0]

        # The ranges training would choose: simple loss with the run's smoothing, then k2's window choice.
        am_logits, lm_logits = model.apply(variables, sources, target_encodings, method=RNNT.simple_logits)
        _, (label_occ, blank_occ) = rnnt_loss_simple(
            am_logits,
            lm_logits,
            targets,
            source_lengths,
            target_lengths,
            blank=blank,
            reduction="none",
            lm_only_scale=optim.lm_only_scale,
            am_only_scale=optim.am_only_scale,
            return_grad=True,
        )
        ranges = rnnt_prune_ranges(label_occ, blank_occ, source_lengths, target_lengths, prune_range)

        full = rnnt_loss(logits, targets, source_lengths, target_lengths, blank=blank, reduction="none")
        pruned = rnnt_loss_pruned(
            sources,
            target_encodings,
            pruned_joiner_fn(model, variables),
            ranges,
            targets,
            source_lengths,
            target_lengths,
            blank=blank,
            reduction="none",
        )
        return {
            "blank_lp": blank_lp,
            "label_lp": label_lp,
            "start": ranges[..., 0],
            "source_lengths": source_lengths,
            "full": full,
            "pruned": pruned,
        }

    return jax.jit(lattice)


def viterbi_exits(blank_lp: np.ndarray, label_lp: np.ndarray) -> np.ndarray:
    """The best alignment of one utterance's lattice: (T, U + 1) arc log-probabilities (valid region only)
    -> exits (T,) int, the label position at which the path emits blank on each frame (non-decreasing,
    exits[-1] = U); the path visits (t, u) for u in [exits[t - 1], exits[t]] (exits[-1] read as 0 for t = 0).

    Row by row: with ``base[u] = alpha[t - 1, u] + blank_lp[t - 1, u]`` (0 at u = 0 on frame 0, -inf at
    u > 0) and ``C[u] = sum(label_lp[t, :u])``, ``alpha[t, u] = C[u] + max_{v <= u}(base[v] - C[v])``.
    """
    frames, nodes = blank_lp.shape
    blank_lp, label_lp = blank_lp.astype(np.float64), label_lp.astype(np.float64)
    from_label = np.zeros((frames, nodes), bool)  # the best way into (t, u) is the label arc from (t, u - 1)
    alpha = np.full(nodes, -np.inf)
    alpha[0] = 0.0
    for t in range(frames):
        base = alpha if t == 0 else alpha + blank_lp[t - 1]
        cumulative = np.concatenate([[0.0], np.cumsum(label_lp[t, :-1])])
        row = cumulative + np.maximum.accumulate(base - cumulative)
        from_label[t, 1:] = row[:-1] + label_lp[t, :-1] > base[1:]
        if t == 0:
            from_label[0, 1:] = True
        alpha = row
    exits = np.zeros(frames, int)
    t, u = frames - 1, nodes - 1
    exits[t] = u
    while t > 0 or u > 0:
        if u > 0 and from_label[t, u]:
            u -= 1
        else:
            t -= 1
            exits[t] = u
    return exits


def frame_misses(exits: np.ndarray, start: np.ndarray, prune_range: int) -> list[list[int]]:
    """For each frame, the signed distances of the path's nodes outside the window (negative: below
    ``start``, positive: above ``start + K - 1``); an empty list for a covered frame."""
    misses, enter = [], 0
    for t, leave in enumerate(exits):
        low, high = int(start[t]), int(start[t]) + prune_range - 1
        u = np.arange(enter, leave + 1)
        outside = np.where(u < low, u - low, np.where(u > high, u - high, 0))
        misses.append([int(d) for d in outside if d])
        enter = leave
    return misses


def diagonal_starts(frames: int, labels: int, prune_range: int) -> np.ndarray:
    """A control without the model: windows centred on the straight line from (0, 0) to (T - 1, U),
    ``start[t] = clip(round((t + 1/2) U / T - (K - 1) / 2), 0, max(U - K + 1, 0))`` (non-decreasing)."""
    centre = (np.arange(frames) + 0.5) * labels / frames
    return np.clip(np.round(centre - (prune_range - 1) / 2), 0, max(labels - prune_range + 1, 0)).astype(int)


class Coverage:
    """Running totals of how a set of utterances' Viterbi paths sit in their windows."""

    def __init__(self, name: str):
        self.name = name
        self.frames = self.covered_frames = self.nodes = self.inside_nodes = 0
        self.utterances = self.covered_utterances = 0
        self.distances: Counter[int] = Counter()

    def add(self, misses: list[list[int]], labels: int) -> None:
        """One utterance: ``frame_misses`` of its path, its label count U (the path has T + U nodes)."""
        missed = sum(bool(m) for m in misses)
        outside = sum(len(m) for m in misses)
        self.frames += len(misses)
        self.covered_frames += len(misses) - missed
        self.nodes += len(misses) + labels
        self.inside_nodes += len(misses) + labels - outside
        self.utterances += 1
        self.covered_utterances += missed == 0
        self.distances.update(d for m in misses for d in m)

    def report(self, distances: bool = True) -> None:
        if not self.utterances:
            print(f"{self.name}: no utterances")
            return
        print(
            f"{self.name}: {self.utterances} utterances, {self.frames} frames; frames covered "
            f"{self.covered_frames / self.frames:.4f}, path nodes inside {self.inside_nodes / self.nodes:.4f}, "
            f"utterances covered on every frame {self.covered_utterances / self.utterances:.4f}"
        )
        outside = sum(self.distances.values())
        if distances and outside:
            below = sum(n for d, n in self.distances.items() if d < 0)
            print(
                f"  nodes outside: {outside} ({below} below the window, {outside - below} above); by distance:"
            )
            for d in sorted(self.distances):
                print(f"    {d:+d}: {self.distances[d]} ({self.distances[d] / outside:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--limit", type=int, default=None, help="first N utterances of the split")
    parser.add_argument(
        "--prune-range", type=int, default=None, help="K (default: the run's optim.prune_range)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = parser.parse_args()
    from streamformer.train.loop.batches import bucket_frames_for
    from streamformer.train.workdir import Run, config_for

    run = Run(config_for(args.workdir), Path(args.workdir))
    run.load_frontend()
    optim = run.config.optim
    if optim.loss != "pruned":
        raise SystemExit(
            f"{args.workdir}: trained with optim.loss={optim.loss!r}; its model has no simple-loss projections"
        )
    model, variables, step = run.restore_variables(args.step)
    prune_range = args.prune_range or optim.prune_range
    blank = run.tokenizer.blank_id
    examples = run.prepare(args.split)[: args.limit or None]
    print(
        f"workdir {args.workdir}, step {step}, {args.split}: {len(examples)} utterances; K = {prune_range}, "
        f"lm_only_scale {optim.lm_only_scale}, am_only_scale {optim.am_only_scale}; "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    lattice_fn = make_lattice_fn(model, optim, blank, prune_range)

    started = time.perf_counter()
    ranges = Coverage("simple-loss ranges, all utterances")
    longer = Coverage(f"simple-loss ranges, utterances with U + 1 > K = {prune_range}")
    diagonal = Coverage("control: diagonal windows, all utterances")
    kept_mass, worst, shapes = [], [], []
    for batch in data_lib.batches(
        examples,
        args.batch_size,
        bucket_frames_for(run.config, examples),
        shuffle=False,
        drop_last=False,
        right_pad_frames=model.right_context_length,
    ):
        out = jax.device_get(
            lattice_fn(variables, batch.features, batch.feature_lengths, batch.targets, batch.target_lengths)
        )
        for b in np.flatnonzero(batch.valid):
            T, U = int(out["source_lengths"][b]), int(batch.target_lengths[b])
            exits = viterbi_exits(out["blank_lp"][b, :T, : U + 1], out["label_lp"][b, :T, : U + 1])
            misses = frame_misses(exits, out["start"][b, :T], prune_range)
            ranges.add(misses, U)
            if U + 1 > prune_range:
                longer.add(misses, U)
            diagonal.add(frame_misses(exits, diagonal_starts(T, U, prune_range), prune_range), U)
            kept_mass.append(float(np.exp(out["full"][b] - out["pruned"][b])))
            worst.append((sum(bool(m) for m in misses) / T, batch.ids[b], T, U))
            shapes.append((T, U))
    seconds = time.perf_counter() - started

    T, U = np.array(shapes).T
    print(
        f"{len(shapes)} utterances in {seconds:.1f} s: T (encoder frames) median {np.median(T):.0f}, max {T.max()}; "
        f"U median {np.median(U):.0f}, max {U.max()}; U / T median {np.median(U / T):.2f}"
    )
    ranges.report()
    longer.report(distances=False)
    diagonal.report(distances=False)
    kept = np.array(kept_mass)
    print(
        f"full-lattice probability kept by the windows, exp(full - pruned) per utterance: mean {kept.mean():.4f}, "
        f"median {np.median(kept):.4f}, p10 {np.percentile(kept, 10):.4f}, min {kept.min():.4f}"
    )
    worst.sort(reverse=True)
    shown = [f"{i} ({100 * f:.0f}% of {T} frames, U {U})" for f, i, T, U in worst[:3] if f > 0]
    if shown:
        print("least covered:", "; ".join(shown))


if __name__ == "__main__":
    main()
