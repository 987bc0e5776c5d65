"""Quantised inference on the CPU: ``emformer_rnnt_base(4097)`` with float32, int8 and bfloat16 weights
(``streamformer.quantize``) against torchaudio 2.8's model in float32 and torch's dynamically quantised int8
(``torch.ao.quantization.quantize_dynamic`` on its Linear and LSTM layers), same weights, same process, 2
threads each (torch.set_num_threads(2); XLA on the machine's 2 cores).

Sections (``--sections``, default all):

- ``floors``: this machine's limits: read bandwidth (a plain sum over a 256 MB float32 array, XLA and torch;
  the faster counts), float32 matmul FLOP/s (4096 x 4096), and for each weight type the bytes of transcriber
  weights a streaming step reads and the time reading them takes at that bandwidth (the step's floor).
- ``step``: batch-1 streaming latency, ms per segment of 16 + 4 frames over 10 s (63 segments; the result
  fetched after every step, the state donated): torchaudio's ``transcribe_streaming`` loop (float32, int8)
  against our jitted ``transcribe_streaming`` per weight type, each beside its floor.
- ``offline``: ``transcribe`` of 10 s at batch 1.
- ``streams``: 32 streams of 10 s as one ``transcribe_in_segments`` scan (batch 32) against torchaudio's
  one-stream loop times 32.
- ``export``: ``export_transducer`` (greedy, batch 1) per weight type: artifact size, and in a fresh process
  the time to load it (``load_exported``) and of its first and later streaming steps (the first compiles; a
  step decodes too: transcriber, then the predictor and joiner on each of its 4 frames).
- ``profile``: where the float32 step's time goes: the step, the 20 layers' matmuls alone as a bare jitted
  chain (same shapes, 5 rows), one greedy ``StreamingDecoder`` step (transcriber + predictor + joiner), the
  predictor step and the joiner alone, and a jitted call that only passes the parameters through
  (dispatch).

Run: ``python benchmarks/quantize.py [--repeats 5] [--sections floors step offline streams export profile]``.
Quote figures only from an idle machine (the script prints the load average before and after); the CPU is
printed from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _timing import (
    cpu_description,
    emformer_matmul_chain,
    matmul_flops_per_second,
    median_time,
    utterance_and_chunks,
)

import streamformer
from streamformer.convert import from_torchaudio, reference
from streamformer.decoding import GreedySearch, StreamingDecoder
from streamformer.decoding.export import export_transducer
from streamformer.transducer import RNNT, emformer_rnnt_base

FRAMES, MELS, V = 1000, 80, 4097
WEIGHTS = ("float32", "int8", "bfloat16")
SECTIONS = ("floors", "step", "offline", "streams", "export", "profile")

LOAD_CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    import numpy as np
    artifact = sys.argv[1]
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("runtime", artifact + "/runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    exported = runtime.load_exported(artifact)
    loaded = time.perf_counter()
    m = exported.manifest
    chunk = np.zeros((1, m["segment_length"] + m["right_context_length"], m["input_dim"]), np.float32)
    lengths = np.array([m["segment_length"] + m["right_context_length"]], np.int32)
    state = exported.init_state()
    times = []
    for _ in range(3):
        t = time.perf_counter()
        state, tokens, frames, counts = exported.step(state, chunk, lengths)
        np.asarray(counts)
        times.append(time.perf_counter() - t)
    print(json.dumps({"load": loaded - started, "first_step": times[0], "step": min(times[1:])}))
    """
)


def read_bandwidth(repeats: int) -> dict:
    """GB/s of a plain sum over a 256 MB float32 array: XLA's and torch's (2 threads)."""
    n = 256 * 2**20 // 4
    x = jnp.ones((n,), jnp.float32)
    total = jax.jit(jnp.sum)
    xla = median_time(lambda: total(x).block_until_ready(), repeats, warmup=True)
    t = torch.ones(n)
    torch_time = median_time(lambda: t.sum(), repeats, warmup=True)
    return {"xla": 256 * 2**20 / xla / 1e9, "torch": 256 * 2**20 / torch_time / 1e9}


def nbytes(tree) -> int:
    return sum(np.asarray(leaf).nbytes for leaf in jax.tree_util.tree_leaves(tree))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS)
    parser.add_argument("--no-torch", action="store_true", help="ours only (e.g. while profiling)")
    args = parser.parse_args()
    sections, r = set(args.sections), args.repeats
    load_start = os.getloadavg()
    torch.set_num_threads(2)
    print(f"CPU: {cpu_description()}; {os.cpu_count()} cores")
    print(
        f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); load average at the start {load_start[0]:.2f} "
        f"{load_start[1]:.2f} {load_start[2]:.2f}"
    )

    ta = reference.load()
    torch.manual_seed(0)
    torch_model = ta.models.emformer_rnnt_base(V).eval()
    model = emformer_rnnt_base(V)
    variables = from_torchaudio(model, torch_model.state_dict())
    pairs = {"float32": (model, variables)}
    for weights in args.weights:
        if weights != "float32":
            pairs[weights] = streamformer.quantize(model, variables, weights)
    torch_models = {}
    if not args.no_torch:
        torch_models["torchaudio float32"] = torch_model
        torch_models["torch int8 (quantize_dynamic)"] = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(torch_model), {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8
        )

    S, R = model.segment_length, model.right_context_length
    features, chunks, T = utterance_and_chunks(model, FRAMES)
    segments = len(chunks)
    full = jnp.array([S + R], jnp.int32)

    floors = {}
    if sections & {"floors", "step", "profile"}:
        bandwidth = read_bandwidth(max(r, 7))
        best = max(bandwidth.values())
        flops = matmul_flops_per_second()
        print(
            f"\nread bandwidth (sum over 256 MB): XLA {bandwidth['xla']:.1f} GB/s, torch {bandwidth['torch']:.1f} "
            f"GB/s; float32 matmul (XLA, 4096^2): {flops / 1e9:.0f} GFLOP/s"
        )
        print("\n| weights | transcriber weights read per step | floor at the read bandwidth |")
        print("|---|---|---|")
        for weights, (_, vs) in pairs.items():
            size = nbytes(vs["params"]["transcriber"])
            floors[weights] = size / (best * 1e9)
            print(f"| {weights} | {size / 1e6:.1f} MB | {1e3 * floors[weights]:.2f} ms |")

    def torch_streaming(net):
        state = None
        with torch.no_grad():
            for chunk in chunks:
                output, _, state = net.transcribe_streaming(
                    torch.from_numpy(chunk), torch.tensor([S + R]), state
                )
                output.numpy()

    steps = {
        weights: jax.jit(
            lambda v, x, n, s, m=m: m.apply(v, x, n, s, method="transcribe_streaming"), donate_argnums=3
        )
        for weights, (m, _) in pairs.items()
    }

    def our_streaming(weights):
        m, vs = pairs[weights]
        state = m.init_transcriber_state(1)
        for chunk in chunks:
            output, _, state = steps[weights](vs, chunk, full, state)
            np.asarray(output)  # fetched every step, as a streaming client would

    step_times = {}
    if "step" in sections:
        for name, net in torch_models.items():
            torch_streaming(net)
            step_times[name] = median_time(lambda: torch_streaming(net), r) / segments
        for weights in pairs:
            our_streaming(weights)
            step_times[weights] = median_time(lambda: our_streaming(weights), r) / segments
        base = step_times.get("torchaudio float32")
        tq = step_times.get("torch int8 (quantize_dynamic)")
        print(
            f"\nBatch-1 streaming step (ms per segment of {S} + {R} frames; {segments} segments, median of {r})"
        )
        print("\n| model | ms/segment | vs torchaudio fp32 | vs torch int8 | floor (weights / bandwidth) |")
        print("|---|---|---|---|---|")
        for name, t in step_times.items():
            vs_base = f"{base / t:.2f}x" if base else "-"
            vs_q = f"{tq / t:.2f}x" if tq else "-"
            floor = f"{1e3 * floors[name]:.2f} ms" if name in floors else ""
            print(f"| {name} | {1e3 * t:.2f} | {vs_base} | {vs_q} | {floor} |")

    if "offline" in sections:
        lengths = torch.tensor([T])
        times = {}
        for name, net in torch_models.items():
            with torch.no_grad():
                run = lambda: net.transcribe(torch.from_numpy(features), lengths)[0].numpy()  # noqa: E731
                run()
                times[name] = median_time(run, r)
        for weights, (m, vs) in pairs.items():
            transcribe = jax.jit(lambda v, x, n, m=m: m.apply(v, x, n, method="transcribe"))
            run = lambda: np.asarray(transcribe(vs, features, jnp.array([T]))[0])  # noqa: E731
            run()
            times[weights] = median_time(run, r)
        report("Offline transcription of 10 s, batch 1 (seconds)", times, r)

    if "streams" in sections:
        B = args.streams
        batch = np.broadcast_to(features, (B, T + R, MELS)).copy()
        times = {}
        for name, net in torch_models.items():
            times[name] = B * step_times.get(name, 0) * segments or B * median_time(
                lambda: torch_streaming(net), 1, warmup=True
            )
        for weights, (m, vs) in pairs.items():
            scan = jax.jit(lambda v, x, n, m=m: m.apply(v, x, n, method="transcribe_in_segments"))
            run = lambda: np.asarray(scan(vs, batch, jnp.full((B,), T, jnp.int32))[0])  # noqa: E731
            run()
            times[weights] = median_time(run, max(1, r // 2))
        report(
            f"{B} streams x 10 s (seconds; torch: its one-stream loop x {B}; ours: one scan at batch {B})",
            times,
            r,
        )

    if "export" in sections:
        print(
            "\nExported artifact (greedy search, at most one token a frame; batch 1; offline program for 1600 "
            "frames). Step: the exported streaming step (transcriber, then predictor and joiner for 4 frames)"
        )
        print("\n| weights | artifact | params.npz | load (fresh process) | first step (compiles) | step |")
        print("|---|---|---|---|---|---|")
        for weights, (m, vs) in pairs.items():
            with tempfile.TemporaryDirectory() as tmp:
                directory = Path(tmp) / "artifact"
                search = GreedySearch(max_symbols_per_step=1)  # random weights emit at every chance
                export_transducer(m, vs, directory, search=search, batch_size=1)
                size = sum(f.stat().st_size for f in directory.iterdir())
                params = (directory / "params.npz").stat().st_size
                child = subprocess.run(
                    [sys.executable, "-c", LOAD_CHILD, str(directory)],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=tmp,
                )
                timing = json.loads(child.stdout.strip().splitlines()[-1])
            print(
                f"| {weights} | {size / 1e6:.1f} MB | {params / 1e6:.1f} MB | {timing['load']:.2f} s | "
                f"{timing['first_step']:.2f} s | {1e3 * timing['step']:.1f} ms |"
            )

    if "profile" in sections:
        profile(pairs, chunks, floors, r)

    load_end = os.getloadavg()
    print(f"\nload average at the end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")


def report(title: str, times: dict, repeats: int) -> None:
    base = times.get("torchaudio float32")
    tq = times.get("torch int8 (quantize_dynamic)")
    print(f"\n{title}, median of {repeats}\n")
    print("| model | seconds | vs torchaudio fp32 | vs torch int8 |")
    print("|---|---|---|---|")
    for name, t in times.items():
        vs_base = f"{base / t:.2f}x" if base else "-"
        vs_q = f"{tq / t:.2f}x" if tq else "-"
        print(f"| {name} | {t:.3f} | {vs_base} | {vs_q} |")


def profile(pairs: dict, chunks: list, floors: dict, repeats: int) -> None:
    """Where a float32 (and quantised) batch-1 step's time goes, in ms per call (median)."""
    S, R = chunks[0].shape[1] - 4, 4
    rows = []
    for weights, (m, vs) in pairs.items():
        step = jax.jit(lambda v, x, n, s, m=m: m.apply(v, x, n, s, method="transcribe_streaming"))
        state = m.init_transcriber_state(1)
        full = jnp.array([S + R], jnp.int32)
        chunk = jnp.asarray(chunks[0])
        call = lambda: step(vs, chunk, full, state)[0].block_until_ready()  # noqa: E731
        rows.append((weights, "transcriber step (transcribe_streaming)", median_time(call, 50, warmup=True)))

        decoder = StreamingDecoder(m, vs, search=GreedySearch(max_symbols_per_step=1))
        dstate = decoder.init(1)
        dcall = lambda: jax.block_until_ready(decoder._step(vs, dstate, chunk, full))  # noqa: E731
        rows.append((weights, "greedy decoder step (transcriber + 4 frames of predictor + joiner)",
                     median_time(dcall, 30, warmup=True)))  # fmt: skip

        tokens = jnp.zeros((1,), jnp.int32)
        pstate = m.init_predictor_state(1)
        predict = jax.jit(lambda v, t, s, m=m: m.apply(v, t, s, method=RNNT.predict_step))
        pcall = lambda: predict(vs, tokens, pstate)[0].block_until_ready()  # noqa: E731
        rows.append((weights, "predictor step (one token)", median_time(pcall, 50, warmup=True)))
        enc = jnp.zeros((1, 1, m.config.encoding_dim))
        join = jax.jit(lambda v, a, b, m=m: m.apply(v, a, b, method=RNNT.joint_logits))
        jcall = lambda: join(vs, enc, enc).block_until_ready()  # noqa: E731
        rows.append((weights, "joiner (one frame, one hypothesis)", median_time(jcall, 50, warmup=True)))
        passthrough = jax.jit(lambda v, x: x + 1)
        xcall = lambda: passthrough(vs, chunk).block_until_ready()  # noqa: E731
        rows.append(
            (weights, "dispatch: a jitted call taking the parameters, doing nothing", median_time(xcall, 50))
        )

    # The bare float32 matmuls of the 20 layers on 5 rows (query, key/value, out_proj, feed-forward).
    chain, weights32 = emformer_matmul_chain()
    x5 = jnp.ones((5, 512), jnp.float32)
    rows.append(("float32", "bare chain of the 20 layers' matmuls, 5 rows",
                 median_time(lambda: chain(x5, weights32).block_until_ready(), 30, warmup=True)))  # fmt: skip
    print(
        f"\nProfile (ms per call, median; floors: {', '.join(f'{w} {1e3 * t:.2f} ms' for w, t in floors.items())})"
    )
    print("\n| weights | what | ms |")
    print("|---|---|---|")
    for weights, what, t in rows:
        print(f"| {weights} | {what} | {1e3 * t:.2f} |")
    for weights, (m, vs) in pairs.items():
        thunk_profile(weights, m, vs, chunks[0], floors)


#: Which part of a layer a thunk of the compiled step belongs to, from its op_name: the five weight matrices,
#: the attention's products over keys and values, and everything else (layer norms, softmax, masks, state).
_MATRICES = ("emb_to_query", "emb_to_key_value", "out_proj", "pos_ff_1", "pos_ff_4")


def _component(op_name: str) -> tuple[int | None, str]:
    layer = re.search(r"emformer_layers_(\d+)/", op_name)
    matrix = next((name for name in _MATRICES if f"/{name}/" in op_name), None)
    if layer is None:
        return None, "outside the layers (input_linear, time reduction, output_linear, layer_norm)"
    if matrix is not None:
        return int(layer.group(1)), matrix
    if "bnqhd" in op_name or "bnhqk" in op_name:
        return int(layer.group(1)), "attention products (scores, weighted values)"
    return int(layer.group(1)), "elementwise and reductions (layer norms, softmax, masks, state)"


def thunk_profile(weights: str, model, variables, chunk, floors: dict, steps: int = 20) -> None:
    """The compiled streaming step's thunks under jax.profiler (a perfetto trace), summed per component of
    the 20 layers and per layer: ms per step, and for each weight matrix the rate at which it was read."""
    S_R = chunk.shape[1]
    step = jax.jit(lambda v, x, n, s: model.apply(v, x, n, s, method="transcribe_streaming"))
    args = (variables, jnp.asarray(chunk), jnp.array([S_R], jnp.int32), model.init_transcriber_state(1))
    op_names = {}
    for line in step.lower(*args).compile().as_text().splitlines():
        found = re.match(r"\s*(?:ROOT )?%(\S+) = .*op_name=\"([^\"]+)\"", line)
        if found:
            op_names[found.group(1)] = found.group(2)
    for _ in range(3):
        step(*args)[0].block_until_ready()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            started = time.perf_counter()
            for _ in range(steps):
                step(*args)[0].block_until_ready()
            wall = (time.perf_counter() - started) / steps
        (trace_file,) = Path(tmp).rglob("perfetto_trace.json.gz")
        with gzip.open(trace_file) as f:
            events = json.load(f)["traceEvents"]
    by_component, by_layer = {}, {}
    for event in events:
        if event.get("ph") != "X" or event.get("name") not in op_names:
            continue
        layer, component = _component(op_names[event["name"]])
        seconds = event["dur"] / 1e6 / steps
        by_component[component] = by_component.get(component, 0.0) + seconds
        if layer is not None:
            by_layer[layer] = by_layer.get(layer, 0.0) + seconds
    layers = variables["params"]["transcriber"]["transformer"]
    owner = lambda layer, name: layer["attention"] if name in layer["attention"] else layer  # noqa: E731
    layer_bytes = {
        name: sum(
            nbytes(owner(layer, name)[name]) for key, layer in layers.items() if key.startswith("emformer")
        )
        for name in _MATRICES
    }
    print(
        f"\n{weights}: thunks of the compiled step under the profiler ({steps} steps, {1e3 * wall:.2f} ms a step "
        f"while traced; floor {1e3 * floors.get(weights, float('nan')):.2f} ms)\n"
    )
    print("| part of the 20 layers | ms per step | weights | read at |")
    print("|---|---|---|---|")
    for component, seconds in sorted(by_component.items(), key=lambda kv: -kv[1]):
        size = layer_bytes.get(component)
        rate = f"{size / seconds / 1e9:.1f} GB/s" if size else ""
        print(f"| {component} | {1e3 * seconds:.2f} | {f'{size / 1e6:.1f} MB' if size else ''} | {rate} |")
    per_layer = np.array([by_layer[i] for i in sorted(by_layer)]) * 1e3
    print(
        f"\nper layer: median {np.median(per_layer):.3f} ms, min {per_layer.min():.3f} ms (layer "
        f"{int(per_layer.argmin())}), max {per_layer.max():.3f} ms (layer {int(per_layer.argmax())})"
    )


if __name__ == "__main__":
    main()
