"""Real speech end to end, small: a tiny espeak-ng build of the three text sources, a small model trained
briefly by the real-speech job (``main --data espeak``: learning curve, seen/unseen test conditions per text
source, a streamed file), the loss falling and the greedy transcripts overlapping the references; then the CLI
transcribing a batch with bad files in it."""

import json

import numpy as np
import pytest
import soundfile

from streamformer.train.__main__ import main as cli
from streamformer.train.corpora.espeak import EspeakCorpusConfig, build_corpus

# A small, easy build: short sentences, two accents, three variants, clean audio. Seed 0: every letter of its
# dev and test sentences occurs in its training text, on which the tokenizer is trained (with seed 1 a "z"
# would not, and those test utterances would be skipped as unencodable).
CORPUS = EspeakCorpusConfig(
    seed=0,
    words_per_sentence=(4, 7),
    max_sentences=10,
    train_renditions=4,
    train_recombined=0,
    voices=("en-us", "en"),
    seen_variants=("", "m1", "f1"),
    unseen_variants=("m3",),
    noise_snr_db=(25.0, 35.0),
    reverb_probability=0.0,
)
SETTINGS = [
    "model.encoding_dim=96",
    "model.time_reduction_input_dim=32",
    "model.transformer_num_heads=4",
    "model.transformer_ffn_dim=192",
    "model.transformer_num_layers=2",
    "model.symbol_embedding_dim=64",
    "model.segment_length=16",
    "model.right_context_length=8",
    "model.transformer_dropout=0.0",
    "model.lstm_dropout=0.0",
    "data.vocab_size=40",
    "data.batch_size=8",
    "data.num_buckets=2",
    "data.spec_augment=false",
    "optim.loss=full",
    "optim.lr=4e-3",
    "optim.warmup_steps=20",
    "loop.steps=200",
    "loop.log_every=10",
    "loop.checkpoint_every=0",
    "loop.eval_every=100",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = build_corpus(tmp_path_factory.mktemp("speech") / "corpus", CORPUS)
    workdir = tmp_path_factory.mktemp("run")
    # The workdir given relative to the working directory, as the README's runs/speech is: the paths the run
    # stores (corpus, shard folder) must still be absolute, for eval and transcribe from anywhere.
    args = ["main", "--data", "espeak", "--corpus", str(root), "--workdir", workdir.name, "--quiet"]
    args += ["--eval-limit", "4", "--test-limit", "3", "--beam", "2"]  # 3: one test sentence per source
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir.parent)
        assert cli(args + [a for item in SETTINGS for a in ("--set", item)]) == 0
    return root, workdir


def test_speech_job_reports_the_curve_and_every_test_condition(trained):
    root, workdir = trained
    results = json.loads((workdir / "results.json").read_text())
    assert results["steps"] == 200 and results["corpus"]["root"] == str(root)
    assert [point["step"] for point in results["curve"]] == [100, 200]  # every eval_every steps, and the end
    first, last = results["curve"]
    assert 0 < first["train_minutes"] < last["train_minutes"]
    assert abs(last["train_minutes"] - results["train_seconds"] / 60) < 0.02, (last, results["train_seconds"])
    conditions = {(r["speakers"], r["mode"], r["search"]) for r in results["test"]}
    assert conditions == {
        (speakers, mode, search)
        for speakers in ("seen", "unseen")
        for mode in ("offline", "streaming")
        for search in ("greedy", "beam2")
    }
    assert all(r["utterances"] == 3 and 0 <= r["cer"] for r in results["test"])
    for r in results["test"]:  # each condition per text source too
        assert set(r["sources"]) == {"fortunes", "fortune-mod", "kjv"}
        assert sum(s["words"] for s in r["sources"].values()) == r["words"]
    seen_sources = results["corpus"]["test-seen"]["sources"]
    assert set(seen_sources) == {"all", "fortunes", "fortune-mod", "kjv"}
    assert 0 <= seen_sources["all"]["oov_rate"] <= 1 and results["corpus"]["sentences"] > 10
    unseen = {
        str(root / json.loads(line)["audio"])
        for line in (root / "test-unseen.jsonl").read_text().splitlines()
    }
    assert results["transcribe"]["file"] in unseen
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["model"]["encoding_dim"] == 96
    # Training read the corpus from a shard folder in the workdir, prepared from the corpus's train/ split.
    shards = workdir / "shards"
    assert stored["data"]["train"] == str(shards) == results["shards"]["folder"]
    assert json.loads((shards / "prepare.json").read_text())["data"]["train"] == str(root / "train")
    index = json.loads((shards / "index.json").read_text())
    assert index["splits"]["train"]["utterances"] == results["corpus"]["train"]["utterances"]


def test_loss_falls_and_greedy_output_overlaps_the_reference(trained, capsys):
    root, workdir = trained
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    capsys.readouterr()
    assert cli(["eval", "--workdir", str(workdir), "--split", "train", "--limit", "24"]) == 0
    (result,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["utterances"] == 24 and result["cer"] < 0.6, result


def test_transcribe_cli_goes_on_past_bad_files(trained, tmp_path, capsys):
    root, workdir = trained
    good = next((root / "train").rglob("*.flac"))
    stereo = tmp_path / "stereo_44k.wav"
    audio, _ = soundfile.read(good, dtype="float32")
    soundfile.write(
        stereo, np.stack([audio, audio], axis=1)[np.arange(0, audio.size, 16000 / 44100).astype(int)], 44100
    )
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "junk.flac").write_bytes(b"not audio" * 50)
    files = [
        str(tmp_path / "missing.flac"),
        str(good),
        str(tmp_path / "empty.wav"),
        str(stereo),
        str(tmp_path / "junk.flac"),
    ]
    capsys.readouterr()
    assert (
        cli(["transcribe", "--workdir", str(workdir), "--compilation-cache", str(tmp_path / "cache"), *files])
        == 2
    )
    captured = capsys.readouterr()
    assert captured.out.count("final: ") == 2
    assert "missing.flac: no such file" in captured.err and "empty.wav: empty file" in captured.err
    assert "junk.flac: cannot decode audio" in captured.err
    assert "3 of 5 file(s) could not be transcribed" in captured.err
    assert "resampled 44100 Hz -> 16000 Hz" in captured.err and "down-mixed 2 channels" in captured.err
