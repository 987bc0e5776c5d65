"""Data at scale: preparation throughput and shard size, peak memory of training from shards (1x and a 4x
corpus), and the share of training time the step waits for the loader.

    # prepare a corpus into shards (timed; hours of audio per minute, bytes per hour)
    python benchmarks/data_at_scale.py prepare --preset speech --corpus CORPUS --out SHARDS
    # a corpus 4x larger: the same shards listed 4 times (hard links, new names), as 4x more readings would be
    python benchmarks/data_at_scale.py replicate SHARDS SHARDS4 4
    # train from shards (or, with --in-memory, from the corpus featurised in memory as before): peak RSS of
    # the trainer and all its children, and the loader-wait share of the step time after the first log window
    python benchmarks/data_at_scale.py train --preset speech --data SHARDS --steps 300

Each figure is printed as one JSON line; BENCHMARKS.md ("Data at scale") has the results and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (OSError, IndexError):
                continue
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def run_sampled(command: list[str], env: dict) -> tuple[int, float, str]:
    """(exit code, peak RSS of the process tree in bytes, output) of ``command``, sampled every 0.2 s."""
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak, output = 0, []
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    reader.join()
    return process.returncode, peak, "".join(output)


def environment() -> dict:
    return dict(os.environ, PYTHONPATH=str(ROOT))


def prepare(args) -> None:
    command = [sys.executable, "-m", "train", "prepare", "--out", args.out, "--preset", args.preset,
               "--workers", str(args.workers)]  # fmt: skip
    for split in ("train", "dev", "test"):
        command += ["--set", f"data.{split}={Path(args.corpus) / split}"] if args.corpus else []
    command += [a for item in args.set for a in ("--set", item)]
    started = time.perf_counter()
    code, peak, output = run_sampled(command, environment())
    seconds = time.perf_counter() - started
    if code:
        sys.exit(output[-3000:])
    index = json.loads((Path(args.out) / "index.json").read_text())
    hours = sum(s["hours"] for s in index["splits"].values())
    size = sum(s["bytes"] for s in index["splits"].values())
    print(json.dumps({
        "what": "prepare", "seconds": round(seconds, 1), "hours": hours, "workers": args.workers,
        "hours_per_minute": round(hours / (seconds / 60), 2), "bytes": size,
        "mb_per_hour": round(size / 1e6 / hours, 1), "peak_rss_gib": round(peak / 2**30, 2),
        "utterances": {k: v["utterances"] for k, v in index["splits"].items()},
        "skipped": {k: v["report"]["skipped"] for k, v in index["splits"].items()},
    }))  # fmt: skip


def replicate(args) -> None:
    source, out, times = Path(args.source), Path(args.out), args.times
    out.mkdir(parents=True, exist_ok=False)
    index = json.loads((source / "index.json").read_text())
    for name in ("tokenizer.model", "global_stats.json"):
        os.link(source / name, out / name)
    shards = index["splits"]["train"]["shards"]
    copies = []
    for copy in range(times):
        for shard in shards:
            name = f"copy{copy}-{shard['file']}"
            os.link(source / shard["file"], out / name)
            copies.append({**shard, "file": name})
    for split in ("dev", "test"):
        for shard in index["splits"][split]["shards"]:
            os.link(source / shard["file"], out / shard["file"])
    train = index["splits"]["train"]
    index["splits"]["train"] = {**train, "shards": copies, "utterances": train["utterances"] * times,
                                "hours": train["hours"] * times, "bytes": train["bytes"] * times}  # fmt: skip
    (out / "index.json").write_text(json.dumps(index))
    print(json.dumps({"what": "replicate", "out": str(out), "train_shards": len(copies)}))


def train(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="data-at-scale-"))
    command = [sys.executable, "-m", "train", "fit", "--workdir", str(workdir), "--preset", args.preset,
               "--quiet", "--no-eval", "--set", f"loop.steps={args.steps}", "--set", "loop.checkpoint_every=0",
               "--set", "loop.eval_every=0", "--set", f"loop.log_every={args.log_every}"]  # fmt: skip
    data = Path(args.data)
    splits = ("train", "dev", "test")
    command += [a for s in splits for a in ("--set", f"data.{s}={data if not args.in_memory else data / s}")]
    command += [a for item in args.set for a in ("--set", item)]
    started = time.perf_counter()
    code, peak, output = run_sampled(command, environment())
    if code:
        sys.exit(output[-3000:])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    windows = [r for r in records if r["kind"] == "train"][1:]  # the first window holds the compilations
    waits = [r["data_wait_fraction"] for r in windows]
    print(json.dumps({
        "what": "train", "preset": args.preset, "data": str(data), "in_memory": args.in_memory,
        "steps": args.steps, "wall_s": round(time.perf_counter() - started, 1),
        "peak_rss_gib": round(peak / 2**30, 3),
        "data_wait_fraction": round(sum(waits) / len(waits), 4) if waits else None,
        "data_wait_fraction_max_window": round(max(waits), 4) if waits else None,
        "windows": len(waits), "load_1min": os.getloadavg()[0],
    }))  # fmt: skip


def loader_cost(args) -> None:
    """What building one training batch costs in the loader: from audio files (decode + log-mel, as a loader
    over audio shards would) against from a shard folder's records (read + decode + normalise)."""
    import numpy as np

    from streamformer.features import GlobalStats
    from streamformer.train.config import preset
    from streamformer.train.corpora import audio, prepare
    from streamformer.train.corpora.shards import ShardSource

    entries = audio.list_librispeech(Path(args.corpus) / "train")
    rng = np.random.default_rng(0)
    config = preset(args.preset)
    stats = GlobalStats.load(Path(args.shards) / "global_stats.json")
    source = ShardSource(args.shards, "train", config.data, stats)
    source.open({0})
    timings = {"audio": [], "shards": []}
    prepare.log_mel_features([audio.audio_of(entries[0])])  # compile the front end outside the timing
    for _ in range(args.batches):
        picked = [entries[i] for i in rng.choice(len(entries), args.batch, replace=False)]
        started = time.perf_counter()
        prepare.log_mel_features([audio.audio_of(e) for e in picked])
        timings["audio"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for i in rng.choice(len(source.lengths), args.batch, replace=False):
            source.read(int(i))
        timings["shards"].append(time.perf_counter() - started)
    print(json.dumps({"what": "loader_cost", "batch": args.batch, "batches": args.batches,
                      **{f"{k}_ms_per_batch": round(1000 * float(np.median(v)), 1) for k, v in timings.items()},
                      "load_1min": os.getloadavg()[0]}))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("prepare")
    p.add_argument("--preset", default="speech")
    p.add_argument("--corpus", default=None, help="a LibriSpeech-layout folder with train/ dev/ test/")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--set", action="append", default=[])
    p = commands.add_parser("replicate")
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("times", type=int)
    p = commands.add_parser("train")
    p.add_argument("--preset", default="speech")
    p.add_argument("--data", required=True, help="a shard folder (or, with --in-memory, the corpus folder)")
    p.add_argument("--in-memory", action="store_true")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--set", action="append", default=[])
    p = commands.add_parser("loader-cost")
    p.add_argument("--preset", default="speech")
    p.add_argument("--corpus", required=True, help="a LibriSpeech-layout folder with train/")
    p.add_argument("--shards", required=True, help="its shard folder")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=10)
    args = parser.parse_args()
    {"prepare": prepare, "replicate": replicate, "train": train, "loader-cost": loader_cost}[args.command](
        args
    )


if __name__ == "__main__":
    main()
