"""Bad files inside a corpus: undecodable, empty and silent audio and an unencodable transcript are skipped,
named in the log and counted in the metrics, or stop the run up front with data.strict=true."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile

from streamformer.text import train_bpe
from streamformer.train import config as config_lib
from streamformer.train.__main__ import main as cli
from streamformer.train.corpora import prepare, screen, synth
from tests.test_train import MICRO

GOOD = 16


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """A LibriSpeech-layout corpus of 20 utterances, 4 of them unusable; a tokenizer made from the clean
    transcripts; {file name: expected reason} of the bad ones."""
    root = tmp_path_factory.mktemp("corpus")
    utterances = synth.generate_split(synth.SynthConfig(seed=3), "train", GOOD + 4)
    tokenizer = root / "tokenizer.model"
    train_bpe([prepare.normalize_text(u.text) for u in utterances], tokenizer, 24)
    bad = utterances[3], utterances[7], utterances[11], utterances[15]
    utterances[15] = synth.Utterance(audio=bad[3].audio, text=bad[3].text + " ÉTÉ", id=bad[3].id)
    corpus = synth.write_librispeech(utterances, root / "LibriSpeech", audio_format="wav")
    path = {u.id: next(corpus.rglob(f"{u.id}.wav")) for u in bad}
    path[bad[0].id].write_bytes(b"RIFF\x00\x00this is not audio at all")
    soundfile.write(path[bad[1].id], np.zeros(0, np.float32), 16000)
    soundfile.write(path[bad[2].id], np.zeros(8000, np.float32), 16000)
    reasons = {
        path[bad[0].id].name: "cannot decode audio",
        path[bad[1].id].name: "empty audio file",
        path[bad[2].id].name: "silent audio",
        path[bad[3].id].name: "transcript: text: expected characters the tokenizer can represent, got 'é'",
    }
    return corpus, tokenizer, reasons


def config_for(corpus: Path, tokenizer: Path, *extra: str) -> config_lib.Config:
    return config_lib.apply_overrides(
        config_lib.preset("tiny"),
        MICRO + [f"data.train={corpus}", f"data.tokenizer={tokenizer}", *extra],
    )


def test_unusable_utterances_are_skipped_and_named(corpus, tmp_path, caplog):
    root, tokenizer, reasons = corpus
    reports = {}
    with caplog.at_level(logging.WARNING, logger="streamformer.train.corpora.screen"):
        examples, _, _ = prepare.prepare_split(
            config_for(root, tokenizer), tmp_path, "train", reports=reports
        )
    assert len(examples) == GOOD
    report = reports["train"]
    assert report.total == GOOD + 4
    assert {Path(r.path).name: r.reason for r in report.rejected}.keys() == reasons.keys()
    for rejected in report.rejected:
        assert reasons[Path(rejected.path).name] in rejected.reason, rejected
    assert {e.id for e in examples}.isdisjoint(r.id for r in report.rejected)
    logged = caplog.text
    assert "skipping 4 of 20 utterances" in logged
    assert all(name in logged for name in reasons)
    record = report.record()
    assert record["skipped"] == 4 and record["utterances"] == GOOD
    assert record["skipped_by_reason"] == {"cannot_decode": 1, "empty": 1, "silent": 1, "transcript": 1}


def test_strict_makes_bad_data_an_error_listing_every_file(corpus, tmp_path):
    root, tokenizer, reasons = corpus
    with pytest.raises(
        screen.BadDataError, match=r"4 of 20 utterances are unusable \(data.strict=true"
    ) as info:
        prepare.prepare_split(config_for(root, tokenizer, "data.strict=true"), tmp_path, "train")
    assert all(name in str(info.value) for name in reasons)


def test_fit_on_a_corpus_with_bad_files_logs_them_in_the_metrics(corpus, tmp_path, capsys):
    root, tokenizer, reasons = corpus
    sets = [f"data.train={root}", f"data.tokenizer={tokenizer}", "loop.steps=2", "loop.checkpoint_every=0"]
    args = ["--preset", "tiny", "--quiet", "--no-eval"] + [a for s in MICRO + sets for a in ("--set", s)]
    assert cli(["fit", "--workdir", str(tmp_path / "strict"), *args, "--set", "data.strict=true"]) == 2
    err = capsys.readouterr().err
    assert "error: data.train: 4 of 20 utterances are unusable" in err and "Traceback" not in err

    assert cli(["fit", "--workdir", str(tmp_path / "run"), *args]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (data,) = [r for r in records if r["kind"] == "data"]
    assert data["step"] == 0 and data["skipped"] == 4 and data["utterances"] == GOOD
    assert sorted(Path(f.split(": ")[0]).name for f in data["skipped_files"]) == sorted(reasons)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2]
    assert "train: 16 utterances ready" in capsys.readouterr().err


def test_featurising_in_chunks_gives_what_one_chunk_gives(corpus, tmp_path, monkeypatch):
    """The audio is read and featurised a few utterances at a time (prepare.FEATURE_CHUNK), bad files in any
    chunk: the same examples, features and skipped files as all at once."""
    root, tokenizer, _ = corpus
    config = config_for(root, tokenizer)
    whole, chunked = {}, {}
    examples, _, _ = prepare.prepare_split(config, tmp_path / "whole", "train", reports=whole)
    monkeypatch.setattr(prepare, "FEATURE_CHUNK", 3)
    again, _, _ = prepare.prepare_split(config, tmp_path / "chunked", "train", reports=chunked)
    assert [e.id for e in again] == [e.id for e in examples] and len(examples) == GOOD
    for a, b in zip(again, examples, strict=True):
        np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(a.targets, b.targets)
    assert [r.path for r in chunked["train"].rejected] == [r.path for r in whole["train"].rejected]
    assert prepare.log_mel_features([]) == []  # a chunk whose files are all unusable
