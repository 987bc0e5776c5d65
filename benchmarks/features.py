"""Feature extraction speed: streamformer.features (jit) vs torchaudio 2.8's Emformer RNN-T pipeline.

    .venv/bin/python benchmarks/features.py [--seconds 10] [--batch 8] [--repeats 20]

Same process, same audio, torch.set_num_threads(2). torchaudio featurizes a batch one utterance at a time
(its pipeline takes one waveform); ours takes the (B, N) batch in one call.
"""

import argparse
import json
import os
import tempfile
import time
import types

import jax
import numpy as np
import torch

from streamformer import features as F
from streamformer.convert import reference


def _interleaved(fns, repeats):
    """Times the functions in turn, repeat after repeat, so a busy machine slows both alike.

    Returns (best, median) seconds for each."""
    for fn in fns:
        fn()  # warm-up (compiles)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [(min(t), float(np.median(t))) for t in times]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ta = reference.load()
    rng = np.random.default_rng(0)
    num_samples = int(args.seconds * F.SAMPLE_RATE)
    waves = (0.1 * rng.standard_normal((args.batch, num_samples))).astype(np.float32)
    stats = F.GlobalStats.from_lists(rng.uniform(5, 20, 80), rng.uniform(0.2, 0.4, 80))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stats.json")
        stats.save(path)
        ta.utils = types.SimpleNamespace(download_asset=lambda _: path)
        bundle = ta.pipelines.rnnt_pipeline.EMFORMER_RNNT_BASE_LIBRISPEECH
        reference_extractor = bundle.get_feature_extractor()
    ours = F.FeatureExtractor(stats)
    torch_waves = [torch.from_numpy(w) for w in waves]

    def run_torch(batch):
        with torch.no_grad():
            for w in torch_waves[:batch]:
                reference_extractor(w)

    def run_ours(batch):
        jax.block_until_ready(ours(waves[:batch]))

    results = {"device": str(jax.devices()[0]), "seconds_per_utterance": args.seconds}
    for batch in (1, args.batch):
        (t_best, t_med), (o_best, o_med) = _interleaved(
            [lambda b=batch: run_torch(b), lambda b=batch: run_ours(b)], args.repeats
        )
        results[f"batch {batch}"] = {
            "torchaudio_ms": round(t_best * 1e3, 2),
            "streamformer_ms": round(o_best * 1e3, 2),
            "torchaudio_median_ms": round(t_med * 1e3, 2),
            "streamformer_median_ms": round(o_med * 1e3, 2),
            "speedup (best)": round(t_best / o_best, 2),
            "speedup (median)": round(t_med / o_med, 2),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
