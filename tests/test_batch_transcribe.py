"""Batch transcription (train/commands/batch_transcribe.py): offline batches equal streaming, results in input order,
word times within the audio; the manifest reader and its errors; the batch mode end to end on wav files
(progress bar, throughput line, JSON lines). A tiny model with 80 mel inputs and a stand-in tokenizer."""

from __future__ import annotations

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
import soundfile

from streamformer.features import GlobalStats
from streamformer.train.commands.batch_transcribe import (
    collect_items,
    read_manifest,
    transcribe_batch,
    transcribe_features,
)
from streamformer.transducer import emformer_rnnt_model
from tests.rnnt_cases import TINY_RNNT, V

PIECES = ["\u2581a", "b", "\u2581c", "d", "\u2581e", "f", "g", "\u2581h", "i", "\u2581j"]
assert len(PIECES) == V - 1


class _Tokenizer:
    blank_id = V - 1
    sp_model = SimpleNamespace(id_to_piece=lambda i: PIECES[i])

    def decode(self, ids):
        return "".join(PIECES[i] for i in ids).replace("\u2581", " ").strip()


@pytest.fixture(scope="module")
def model_and_variables():
    model = emformer_rnnt_model(**{**TINY_RNNT, "input_dim": 80})
    variables = jax.jit(model.init)(jax.random.key(0), *model.example_inputs())
    params = variables["params"]
    linear = {**params["joiner"]["linear"], "kernel": params["joiner"]["linear"]["kernel"] * 3.0}
    return model, {"params": {**params, "joiner": {**params["joiner"], "linear": linear}}}


@pytest.mark.parametrize("search", ["greedy", "modified_beam"])
def test_offline_batches_equal_streaming(model_and_variables, search):
    model, variables = model_and_variables
    rng = np.random.default_rng(0)
    features = [rng.standard_normal((n, 80)).astype(np.float32) for n in (30, 8, 20, 3)]
    kwargs = dict(search=search, beam=3, batch_size=2)
    offline = transcribe_features(model, variables, _Tokenizer(), features, **kwargs)
    streaming = transcribe_features(model, variables, _Tokenizer(), features, streaming=True, **kwargs)
    assert offline == streaming
    alone = [transcribe_features(model, variables, _Tokenizer(), [f], **kwargs)[0] for f in features[:2]]
    assert offline[:2] == alone  # input order kept, padding and batch-mates change nothing
    assert sum(len(r["tokens"]) for r in offline) > 5
    for f, r in zip(features, offline):
        assert r["text"] == _Tokenizer().decode(r["tokens"])
        assert len(r["words"]) == len(r["text"].split())
        assert all(0 <= w["start"] < w["end"] <= f.shape[0] * 0.01 + 1e-6 for w in r["words"])


def test_manifest(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"audio": "a/x.wav"}\n\n{"audio": "/abs/y.flac", "id": "u2"}\n')
    items = read_manifest(tmp_path / "m.jsonl")
    assert [(i.id, i.audio) for i in items] == [("x", str(tmp_path / "a/x.wav")), ("u2", "/abs/y.flac")]
    (tmp_path / "bad.jsonl").write_text('{"audio": "x.wav"}\n{"id": "no audio"}\n')
    with pytest.raises(ValueError, match=r'line 2: expected an object with an "audio" path'):
        read_manifest(tmp_path / "bad.jsonl")
    (tmp_path / "notjson.jsonl").write_text("x.wav\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        read_manifest(tmp_path / "notjson.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="at least one line"):
        read_manifest(tmp_path / "empty.jsonl")
    with pytest.raises(FileNotFoundError, match="manifest"):
        read_manifest(tmp_path / "missing.jsonl")


def test_batch_mode_end_to_end(model_and_variables, tmp_path, capsys):
    model, variables = model_and_variables
    rng = np.random.default_rng(1)
    for name, seconds in (("one", 0.5), ("two", 0.3), ("three", 0.8)):
        soundfile.write(tmp_path / f"{name}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    (tmp_path / "m.jsonl").write_text('{"audio": "two.wav", "id": "second"}\n{"audio": "three.wav"}\n')
    out = tmp_path / "out" / "hyp.jsonl"
    items = collect_items([str(tmp_path / "one.wav")], tmp_path / "m.jsonl")
    run = SimpleNamespace(
        tokenizer=_Tokenizer(), stats=GlobalStats(np.zeros(80, np.float32), np.ones(80, np.float32))
    )
    summary = transcribe_batch(run, model, variables, items, out=out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["one", "second", "three"]
    assert [line["duration"] for line in lines] == [0.5, 0.3, 0.8]
    assert set(lines[0]) == {"id", "audio", "duration", "text", "tokens", "words"}
    err = capsys.readouterr().err
    assert "3/3" in err and "s of audio per second" in err
    assert summary["files"] == 3
    with pytest.raises(ValueError, match="beam"):
        transcribe_batch(run, model, variables, collect_items(["x.wav"]), out="o", search="beam")


def test_exported_artifact_transcribes_like_the_checkpoint(model_and_variables, tmp_path, capsys):
    """``python -m train export`` then ``transcribe --exported``: the same JSON lines as the live model."""
    from streamformer.text import Tokenizer, train_bpe
    from streamformer.train.commands.batch_transcribe import transcribe_exported
    from streamformer.train.commands.export import export_run

    model, variables = model_and_variables
    tokenizer = Tokenizer(
        train_bpe(["ab ba abab", "ba ab", "aab bba"], tmp_path / "t.model", 10, hard_vocab_limit=False)
    )
    run = SimpleNamespace(
        tokenizer=tokenizer, stats=GlobalStats(np.zeros(80, np.float32), np.ones(80, np.float32))
    )
    rng = np.random.default_rng(2)
    files = []
    for name, seconds in (("one", 0.4), ("two", 0.25), ("three", 0.3)):
        files.append(str(tmp_path / f"{name}.wav"))
        soundfile.write(files[-1], 0.1 * rng.standard_normal(int(16000 * seconds)), 16000)
    export_run(run, model, variables, tmp_path / "art", batch_size=2, max_frames=48)
    items = collect_items(files)
    transcribe_exported(tmp_path / "art", items, out=tmp_path / "e.jsonl", progress=False)
    transcribe_batch(run, model, variables, items, out=tmp_path / "l.jsonl", progress=False, batch_size=2)
    assert (tmp_path / "e.jsonl").read_text() == (tmp_path / "l.jsonl").read_text()
    assert any(json.loads(line)["tokens"] for line in (tmp_path / "e.jsonl").read_text().splitlines())
    export_run(run, model, variables, tmp_path / "small", max_frames=16)
    with pytest.raises(ValueError, match="max_frames = 16"):
        transcribe_exported(tmp_path / "small", items[:1], out=tmp_path / "x.jsonl")
