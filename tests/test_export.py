"""Export: the exported streaming step and offline transcription, loaded in a fresh process that never
imports streamformer (the artifact's runtime.py loaded by path), give bit-identical outputs to the live
model on the same backend; artifacts of a newer format or another config, and inputs of the wrong shape,
are rejected."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from streamformer.decoding import GreedySearch, ModifiedBeamSearch, StreamingDecoder
from streamformer.decoding.export import export_transducer, load_exported
from streamformer.transducer import RNNT
from tests.decoding_cases import BLANK, padded_sources, tiny_model
from tests.rnnt_cases import R, S

MAX_FRAMES, MAX_TOKENS = 40, 64

CHILD = textwrap.dedent(
    """
    import importlib.util, json, sys, time
    import numpy as np
    artifact, io = sys.argv[1], sys.argv[2]
    started = time.perf_counter()
    spec = importlib.util.spec_from_file_location("runtime", artifact + "/runtime.py")
    runtime = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runtime)
    exported = runtime.load_exported(artifact)
    load_seconds = time.perf_counter() - started
    inputs = np.load(io + "/inputs.npz")
    state = exported.init_state()
    for i in range(int(inputs["steps"])):
        state, tokens, frames, counts = exported.step(state, inputs[f"chunk{i}"], inputs[f"lengths{i}"])
    offline = exported.transcribe(inputs["sources"], inputs["source_lengths"])
    np.savez(io + "/outputs.npz", tokens=tokens, frames=frames, counts=counts,
             off_tokens=offline[0], off_frames=offline[1], off_counts=offline[2],
             **{f"state{i}": x for i, x in enumerate(state)})
    print(json.dumps({"load_seconds": load_seconds,
                      "streamformer_modules": sorted(m for m in sys.modules if m.startswith("streamformer"))}))
    """
)


@pytest.fixture(scope="module")
def model_and_variables():
    return tiny_model()


def test_exported_equals_live_in_a_fresh_process(model_and_variables, tmp_path):
    """Greedy search here; modified beam search's exported step is checked in-process below."""
    model, variables = model_and_variables
    search = GreedySearch(3)
    x, lengths = padded_sources()
    x, lengths = x[:2], lengths[:2]  # batch of 2: 40 and 24 frames
    artifact = tmp_path / "artifact"
    export_transducer(
        model, variables, artifact, search=search, batch_size=2, max_frames=MAX_FRAMES, max_tokens=MAX_TOKENS
    )
    # The live model: the streaming decoder, and the offline search on the same padded width.
    decoder = StreamingDecoder(model, variables, search=search, max_tokens=MAX_TOKENS)
    state = decoder.init(2)
    chunks = list(model.layout.iter_chunks(x[:, :MAX_FRAMES], lengths))
    inputs = {"steps": len(chunks), "sources": x, "source_lengths": lengths.astype(np.int32)}
    for i, (chunk, chunk_lengths) in enumerate(chunks):
        inputs[f"chunk{i}"], inputs[f"lengths{i}"] = chunk, chunk_lengths.astype(np.int32)
        state = decoder.step(state, chunk, chunk_lengths)
    np.savez(tmp_path / "inputs.npz", **inputs)
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(artifact), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the repository: streamformer is not importable by accident
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        check=False,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["streamformer_modules"] == []
    out = np.load(tmp_path / "outputs.npz")
    for i, leaf in enumerate(jax.tree_util.tree_leaves(state)):
        np.testing.assert_array_equal(out[f"state{i}"], np.asarray(leaf))  # bit-exact
    live = decoder.result(state)
    for b in range(2):
        assert out["tokens"][b, : out["counts"][b]].tolist() == live[b][0].tokens
    # Offline: the exported program equals greedy_search bit for bit.
    from streamformer.decoding import greedy_search

    offline = greedy_search(model, variables, x, lengths, max_symbols_per_step=3, return_timestamps=True)
    counts = out["off_counts"]
    got = [
        (out["off_tokens"][b, : counts[b]].tolist(), out["off_frames"][b, : counts[b]].tolist())
        for b in range(2)
    ]
    assert got == [(u[0].tokens, u[0].timestamps) for u in offline]
    size = sum(f.stat().st_size for f in artifact.iterdir())
    print(f"artifact {size / 1e6:.2f} MB, load {report['load_seconds']:.2f} s")


def test_modified_beam_export_and_bad_artifacts(model_and_variables, tmp_path):
    model, variables = model_and_variables
    artifact = tmp_path / "a"
    search = ModifiedBeamSearch(2)
    export_transducer(model, variables, artifact, search=search, batch_size=1, max_frames=16, max_tokens=8)
    config = dataclasses.asdict(model.config)
    exported = load_exported(artifact, expected_config=config)
    state = exported.init_state()
    # Two exported steps equal the live decoder's, bit for bit.
    x, lengths = padded_sources()
    decoder = StreamingDecoder(model, variables, search=search, max_tokens=8)
    live = decoder.init(1)
    for chunk, chunk_lengths in model.layout.iter_chunks(x[:1, :16], np.array([16])):
        live = decoder.step(live, chunk, chunk_lengths)
        state, tokens, frames, counts = exported.step(state, chunk, chunk_lengths.astype(np.int32))
    for a, b in zip(state, jax.tree_util.tree_leaves(live)):
        np.testing.assert_array_equal(a, np.asarray(b))
    best = decoder.result(live)[0][0]
    assert (
        tokens[0, : counts[0]].tolist() == best.tokens and frames[0, : counts[0]].tolist() == best.timestamps
    )
    state = exported.init_state()
    with pytest.raises(ValueError, match="segment_features"):
        exported.step(state, np.zeros((1, S, 8), np.float32), np.array([S]))
    with pytest.raises(ValueError, match="source_lengths"):
        exported.transcribe(np.zeros((1, 16 + R, 8), np.float32), np.array([17]))
    with pytest.raises(ValueError, match="expected_config.*encoding_dim: expected 32, artifact has 16"):
        load_exported(artifact, expected_config={**config, "encoding_dim": 32})
    manifest = json.loads((artifact / "manifest.json").read_text())
    (artifact / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version.*got 99"):
        load_exported(artifact)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_exported(tmp_path / "nothing")
    assert BLANK == exported.manifest["blank"]
    assert RNNT


def test_search_only_reset_and_decoded_frames_match_the_live_decoder(model_and_variables, tmp_path):
    """What a server needs at an endpoint: the frames each search decoded, and a reset of the search alone
    (the transcriber keeps its context), as the live decoder's ``reset(..., reset_transcriber=False)``."""
    model, variables = model_and_variables
    export_transducer(model, variables, tmp_path / "a", batch_size=2, max_frames=16, max_tokens=MAX_TOKENS)
    exported = load_exported(tmp_path / "a")
    decoder = StreamingDecoder(model, variables, search=GreedySearch(), max_tokens=MAX_TOKENS)
    live, state = decoder.init(2), exported.init_state()
    x, lengths = padded_sources()
    chunks = list(model.layout.iter_chunks(x[:2, :32], np.array([32, 20])))
    for i, (chunk, chunk_lengths) in enumerate(chunks):
        live = decoder.step(live, chunk, chunk_lengths)
        state = exported.step(state, chunk, chunk_lengths.astype(np.int32))[0]
        if i == 1:
            mask = np.array([False, True])
            live = decoder.reset(live, mask, reset_transcriber=False)
            state = exported.reset(state, mask, search_only=True)
        np.testing.assert_array_equal(exported.decoded_frames(state), np.asarray(live.search.frames))
    for a, b in zip(state, jax.tree_util.tree_leaves(live)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert exported.decoded_frames(state)[1] < exported.decoded_frames(state)[0]
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    del manifest["state_paths"]  # an artifact from before the names
    (tmp_path / "a" / "manifest.json").write_text(json.dumps(manifest))
    older = load_exported(tmp_path / "a")
    np.testing.assert_array_equal(older.reset(state, np.array([True, True]))[0], older.init_state()[0])
    with pytest.raises(ValueError, match="state_paths: .*export it again"):
        older.reset(state, np.array([True, False]), search_only=True)
