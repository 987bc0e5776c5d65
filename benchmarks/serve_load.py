"""Load on ``python -m train serve``: how many concurrent real-time streams one server sustains, and the latency
from a segment's last sample leaving the client to its result arriving (p50, p95), against the same streams
served one per process (torchaudio's streaming example's way: a process per stream, batch 1).

    python benchmarks/serve_load.py --preset tiny --streams 1 4 8 16 32
    python benchmarks/serve_load.py --preset base --streams 1 4 8 12 16 --per-process 1 4 8

Untrained weights serve for timing (a base model with random weights and a 4096-piece tokenizer, written with
``write_initialised_run``), once their blank's joiner bias is raised (``--blank-bias``) so that they emit a few
tokens a second as a trained model does, not the greedy search's worst case of 10 a frame. Clients (one
process, asyncio) send 50 ms packets at real-time pace, starting at random offsets within one segment; each
stream speaks ``--seconds`` of synthesized utterances. The server sends a result after every decoded segment,
so result k is segment k's: its last sample is sample ((k + 1) S + R - 1) x 160 + 200 (the last frame's window
end) of the stream; the latency is the result's arrival minus the moment the packet holding that sample was
sent (the first ``--skip`` segments, while streams still join, are left out). A load sustains real time when
p95 stays under ``--goal-ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streamformer.quantization import QUANTIZED_FORMATS  # noqa: E402
from train.corpora import synth  # noqa: E402
from train.serve.client import stream_audio  # noqa: E402

HOP, RATE = 160, 16000
BLANK_BIAS = 2.0  # the untrained base model then emits ~1.4 tokens a second of speech


def make_run(preset: str, folder: Path, blank_bias: float = BLANK_BIAS):
    """An untrained run of ``preset`` (its tokenizer size as the preset says) in ``folder``, its blank's joiner
    bias raised by ``blank_bias``: random weights otherwise emit up to 10 tokens a frame, the greedy search's
    worst case (10 predictor and joiner calls per frame), where a trained model emits a few a second."""
    from streamformer.features import GlobalStats
    from streamformer.text import train_bpe
    from train import config as config_lib
    from train.corpora.prepare import log_mel_features
    from train.workdir import write_initialised_run

    config = config_lib.preset(preset)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(30000)]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(6000)]
    tokenizer = train_bpe(texts, folder / "tokenizer.model", config.data.vocab_size, minloglevel=2)
    audio = [synth.synthesize(synth.SynthConfig(), "test", i).audio for i in range(20)]
    frames = np.concatenate(log_mel_features(audio))
    stats = GlobalStats.from_lists(frames.mean(0), 1 / (frames.std(0) + 1e-3))

    def like_trained(params):
        linear = params["joiner"]["linear"]
        linear = {**linear, "bias": linear["bias"].at[-1].add(blank_bias)}
        return {**params, "joiner": {**params["joiner"], "linear": linear}}

    write_initialised_run(folder, config, tokenizer, stats, edit_params=like_trained)
    return config


def speech(seconds: float, seed: int) -> np.ndarray:
    parts, total, i = [], 0, seed * 50
    while total < seconds * RATE:
        parts.append(synth.synthesize(synth.SynthConfig(), "test", i).audio)
        total += parts[-1].size
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)].astype(np.float32)


def start_servers(
    workdir: Path, count: int, slots: int, quantize: str | None = None
) -> list[tuple[subprocess.Popen, str]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    servers = []
    for i in range(count):
        log = open(workdir / f"server_{i}.log", "w")  # noqa: SIM115 (the server's own lifetime)
        process = subprocess.Popen(
            [sys.executable, "-m", "train", "serve", "--workdir", str(workdir), "--port", "0",
             "--max-streams", str(slots), "--idle-timeout", "600",
             *(["--quantize", quantize] if quantize else [])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=log, text=True,
        )  # fmt: skip
        servers.append(process)
    urls = []
    for i, process in enumerate(servers):
        line = process.stdout.readline().strip()
        if not line.startswith("listening on "):
            tail = (workdir / f"server_{i}.log").read_text()[-3000:]
            raise SystemExit(f"the server did not start: {line!r}; its log ends:\n{tail}")
        urls.append(line.removeprefix("listening on ") + "/")
    return list(zip(servers, urls))


def stop_servers(servers) -> None:
    for process, _ in servers:
        process.terminate()
    for process, _ in servers:
        process.wait(60)


def latencies(outcome, S: int, R: int, skip: int) -> list[float]:
    sent_times = np.array([t for t, _ in outcome.sent])
    sent_samples = np.array([n for _, n in outcome.sent])
    out = []
    for k, (arrived, _) in enumerate(outcome.results):
        last_sample = ((k + 1) * S + R - 1) * HOP + 200
        if k < skip or last_sample > sent_samples[-1]:
            continue
        packet = int(np.searchsorted(sent_samples, last_sample))
        out.append(arrived - sent_times[packet])
    return out


async def load(urls: list[str], streams: int, seconds: float, segment_seconds: float) -> list:
    audios = [speech(seconds, seed) for seed in range(streams)]
    rng = random.Random(streams)

    async def one(index: int):
        await asyncio.sleep(rng.uniform(0, segment_seconds))
        return await stream_audio(urls[index % len(urls)], audios[index], realtime=True, packet_seconds=0.05)

    return await asyncio.gather(*(one(i) for i in range(streams)))


def measure(
    workdir, S, R, streams, seconds, per_process: bool, slots: int | None, skip: int, quantize: str | None
) -> dict:
    servers = start_servers(
        workdir, streams if per_process else 1, 1 if per_process else (slots or streams), quantize
    )
    try:
        urls = [url for _, url in servers]
        asyncio.run(load(urls, len(urls), 1.0, 0.0))  # warm-up: every server's first stream
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        outcomes = asyncio.run(load(urls, streams, seconds, S * HOP / RATE))
        wall = time.perf_counter() - started
    finally:
        stop_servers(servers)
    errors = [o.error for o in outcomes if o.error]
    values = np.array([v for o in outcomes for v in latencies(o, S, R, skip)]) * 1000
    tail = [o.results[-1][0] - o.sent[-1][0] for o in outcomes if o.results and o.sent]
    return {
        "mode": "one process per stream" if per_process else f"one server, {slots or streams} slots",
        "streams": streams,
        "p50_ms": round(float(np.percentile(values, 50)), 1) if values.size else None,
        "p95_ms": round(float(np.percentile(values, 95)), 1) if values.size else None,
        "max_ms": round(float(values.max()), 1) if values.size else None,
        "final_after_done_ms": round(1000 * float(np.median(tail)), 1) if tail else None,
        "segments": int(values.size),
        "words_per_second": round(sum(len(o.transcript.split()) for o in outcomes) / (streams * seconds), 2),
        "errors": len(errors),
        "wall_s": round(wall, 1),
        "load_1min_before": round(load_before, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "base"])
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 4, 8])
    parser.add_argument(
        "--per-process", type=int, nargs="*", default=[], help="stream counts, one process each"
    )
    parser.add_argument("--max-streams", type=int, default=None, help="server slots (default: the streams)")
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    parser.add_argument("--skip", type=int, default=3, help="first segments of each stream left out")
    parser.add_argument("--goal-ms", type=float, default=300.0)
    parser.add_argument(
        "--blank-bias", type=float, default=BLANK_BIAS, help="added to an untrained model's blank"
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="serve this run (made there, untrained, if missing; "
        "default: an untrained one in a temporary folder)",
    )
    parser.add_argument("--quantize", choices=QUANTIZED_FORMATS, default=None, help="the servers' weights")
    args = parser.parse_args()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        "?",
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "weights": args.quantize or "float32",
                "cpu": cpu,
                "cores": os.cpu_count(),
            }
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp) / "run"
        if (workdir / "config.json").exists():
            from train import config as config_lib

            config = config_lib.from_dict(json.loads((workdir / "config.json").read_text()))
        else:
            config = make_run(args.preset, workdir, args.blank_bias)
        S, R = config.model.segment_length, config.model.right_context_length
        rows = []
        for streams in args.streams:
            rows.append(
                measure(
                    workdir, S, R, streams, args.seconds, False, args.max_streams, args.skip, args.quantize
                )
            )
            print(json.dumps(rows[-1]), flush=True)
        for streams in args.per_process:
            rows.append(measure(workdir, S, R, streams, args.seconds, True, None, args.skip, args.quantize))
            print(json.dumps(rows[-1]), flush=True)
    sustained = [r["streams"] for r in rows if r["mode"].startswith("one server") and r["p95_ms"] is not None
                 and r["p95_ms"] < args.goal_ms and not r["errors"]]  # fmt: skip
    print(f"most concurrent real-time streams with p95 < {args.goal_ms:g} ms: {max(sustained, default=0)}")


if __name__ == "__main__":
    main()
