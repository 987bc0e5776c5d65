"""The trainer (train/): config, loss step, non-finite skipping, checkpoints, multi-device, CLI end to end.

Runs with a micro model on a few dozen synthesized utterances. Training subprocesses share a persistent
compilation cache, so the train step compiles once for the whole module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from streamformer.layout import SegmentLayout
from streamformer.train import config as config_lib
from streamformer.train.__main__ import main as cli
from streamformer.train.evaluation import edit_distance, error_rates
from streamformer.train.loop.checkpoint import CheckpointMismatchError, Checkpoints
from streamformer.train.loop.step import init_state, make_optimizer, make_train_step
from tests.conftest import shard_args

ROOT = Path(__file__).resolve().parents[1]

MICRO = [
    "model.encoding_dim=32",
    "model.time_reduction_input_dim=16",
    "model.transformer_num_heads=2",
    "model.transformer_ffn_dim=32",
    "model.transformer_num_layers=1",
    "model.symbol_embedding_dim=32",
    "model.segment_length=8",
    "model.right_context_length=4",
    "model.transformer_left_context_length=4",
    "data.synth_sizes=48,8,8",
    "data.vocab_size=24",
    "data.batch_size=8",
    "data.num_buckets=1",
    "optim.lr=3e-3",
    "optim.warmup_steps=5",
    "loop.log_every=1",
]


def micro_config(*extra: str) -> config_lib.Config:
    return config_lib.apply_overrides(config_lib.preset("tiny"), MICRO + list(extra))


def run_cli(*args: str, cache: Path, env_extra: dict | None = None, **popen) -> subprocess.Popen:
    env = dict(
        os.environ, PYTHONPATH=str(ROOT), STREAMFORMER_COMPILATION_CACHE=str(cache), **(env_extra or {})
    )
    return subprocess.Popen(
        [sys.executable, "-m", "train", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )


def step_losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def final_params(workdir: Path, config: config_lib.Config):
    from streamformer.train.workdir import Run

    run = Run(config, workdir)
    run.load_frontend()
    return run.restore_variables()[1]["params"]


FIT = ["--preset", "tiny", "--quiet", "--no-eval"] + [
    a for item in MICRO + ["loop.steps=40"] for a in ("--set", item)
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache, micro_shards) -> tuple[Path, config_lib.Config]:
    """A micro model trained for 40 steps by the CLI (in a subprocess, to fill the compilation cache), from
    the micro corpus's shard folder (as a large corpus is trained: read from disk as it goes)."""
    workdir = tmp_path_factory.mktemp("fit")
    process = run_cli(
        "fit",
        "--workdir",
        str(workdir),
        *FIT,
        *shard_args(micro_shards),
        "--set",
        "loop.checkpoint_every=20",
        cache=cache,
    )
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    return workdir, micro_config("loop.steps=40", "loop.checkpoint_every=20")


# ------------------------------------------------------------------------------------------------------------
# Pure pieces


def test_config_overrides_and_round_trip():
    config = config_lib.apply_overrides(
        config_lib.preset("tiny"),
        [
            "model.transformer_num_layers=2",
            "optim.lr=1e-3",
            "model.transformer_weight_init_scale_strategy=none",
            "data.synth_sizes=10,2,2",
            "data.spec_augment=false",
        ],
    )
    assert config.model.transformer_num_layers == 2 and config.optim.lr == 1e-3
    assert config.model.transformer_weight_init_scale_strategy is None
    assert config.data.synth_sizes == (10, 2, 2) and config.data.spec_augment is False
    assert config_lib.from_dict(json.loads(json.dumps(config_lib.to_dict(config)))) == config
    with pytest.raises(ValueError, match="unknown key 'layers'"):
        config_lib.apply_overrides(config, ["model.layers=2"])
    with pytest.raises(ValueError, match="model.transformer_num_layers: expected a int"):
        config_lib.apply_overrides(config, ["model.transformer_num_layers=two"])
    with pytest.raises(ValueError, match="section.key=value"):
        config_lib.apply_overrides(config, ["lr=1"])


def test_error_rates():
    assert edit_distance("kitten", "sitting") == 3
    rates = error_rates(["am so like", "milk"], ["am so lake", ""])
    assert rates["word_errors"] == 2 and rates["words"] == 4 and rates["wer"] == 0.5
    assert rates["char_errors"] == 1 + 4 and rates["chars"] == 10 + 4


def test_iter_chunks_lengths():
    features = np.zeros((2, 23, 3), np.float32)
    chunks = list(SegmentLayout(8, 4).iter_chunks(features, np.array([19, 8])))
    assert len(chunks) == 3 and all(c.shape == (2, 12, 3) for c, _ in chunks)
    assert [c[1].tolist() for c in chunks] == [[12, 12], [12, 0], [7, 0]]


def test_iter_chunks_take_the_look_ahead_after_the_valid_frames():
    """A partial last chunk: its valid frames, then (after padding) the R frames that follow them, not the
    frames that happen to sit after the segment's end."""
    features = np.full((1, 30, 1), -1.0, np.float32)  # junk
    features[0, :23, 0] = np.arange(23)  # 19 valid frames, then their 4 look-ahead frames 19..22
    chunks = list(SegmentLayout(8, 4).iter_chunks(features, np.array([19])))
    last, length = chunks[-1]
    assert length.tolist() == [7]
    assert last[0, :3, 0].tolist() == [16, 17, 18] and last[0, -4:, 0].tolist() == [19, 20, 21, 22]


# ------------------------------------------------------------------------------------------------------------
# The train step


@pytest.fixture(scope="module")
def step_setup():
    config = micro_config("data.spec_augment=false", "model.transformer_dropout=0", "model.lstm_dropout=0")
    from streamformer.train.loop.step import build_model

    model = build_model(config.model, 25)
    optimizer = make_optimizer(config.optim, 100)
    step = jax.jit(make_train_step(model, optimizer, config, blank=24))
    rng = np.random.default_rng(0)
    batch = {
        "features": rng.standard_normal((4, 36, 80)).astype(np.float32),
        "feature_lengths": np.array([32, 30, 24, 16], np.int32),
        "targets": rng.integers(0, 24, (4, 5)).astype(np.int32),
        "target_lengths": np.array([5, 4, 3, 2], np.int32),
        "valid": np.array([True, True, True, False]),
    }
    return model, optimizer, step, batch


def test_nonfinite_step_is_skipped(step_setup):
    model, optimizer, step, batch = step_setup
    state = init_state(model, optimizer, 0)
    before = jax.device_get(state.params)
    bad = dict(batch, features=batch["features"].copy())
    bad["features"][0, 3, 5] = np.nan
    state, metrics = step(state, bad)
    assert not bool(metrics["finite"])
    assert int(state.step) == 1 and int(state.skipped) == 1 and int(state.nonfinite_in_a_row) == 1
    jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(state.params))
    state, metrics = step(state, batch)
    assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
    assert int(state.skipped) == 1 and int(state.nonfinite_in_a_row) == 0
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, jax.device_get(state.params))
    assert any(jax.tree.leaves(changed))


def test_fill_rows_do_not_count(step_setup):
    """Rows marked valid=False (fill rows of a short batch) change neither the loss nor the gradient."""
    model, optimizer, step, batch = step_setup
    state = init_state(model, optimizer, 0)
    _, metrics = step(state, batch)
    other = dict(batch, features=batch["features"].copy())
    other["features"][3] = 7.0  # the invalid row
    state = init_state(model, optimizer, 0)
    _, metrics_other = step(state, other)
    assert float(metrics["utterances"]) == 3
    np.testing.assert_allclose(float(metrics["loss"]), float(metrics_other["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(metrics_other["grad_norm"]), rtol=1e-5)


def test_conv_emformer_bfloat16_step_runs(step_setup):
    """The ConvEmformer transducer trains too; here in bfloat16 compute with SpecAugment (one compilation)."""
    config = micro_config(
        "model.dtype=bfloat16",
        "data.spec_augment=true",
        "model.kind=conv_emformer",
        "model.transformer_kernel_size=3",
    )
    from streamformer.train.loop.step import build_model
    from streamformer.transducer import ConvEmformerTranscriber

    _, _, _, batch = step_setup
    model = build_model(config.model, 25)
    assert isinstance(model.transcriber, ConvEmformerTranscriber)
    optimizer = make_optimizer(config.optim, 100)
    state = init_state(model, optimizer, 0)
    state, metrics = jax.jit(make_train_step(model, optimizer, config, blank=24))(state, batch)
    assert bool(metrics["finite"]) and float(metrics["loss"]) > 0
    assert jax.tree.leaves(state.params)[0].dtype == jnp.float32


def test_pruned_loss_step_trains(step_setup):
    """optim.loss=pruned: the model gains the simple-loss projections, steps are finite, the loss falls."""
    config = micro_config(
        "data.spec_augment=false",
        "model.transformer_dropout=0",
        "model.lstm_dropout=0",
        "optim.loss=pruned",
        "optim.prune_range=3",
        "optim.loss_warmup_steps=2",
        "optim.lr=3e-3",
        "optim.warmup_steps=1",
    )
    from streamformer.train.loop.step import build_model

    _, _, _, batch = step_setup
    with pytest.raises(ValueError, match=r"optim.loss: \"pruned\" needs the simple-loss projections"):
        make_train_step(build_model(config.model, 25), make_optimizer(config.optim, 100), config, blank=24)
    model = build_model(config.model, 25, simple_loss_projections=True)
    optimizer = make_optimizer(config.optim, 100)
    state = init_state(model, optimizer, 0)
    assert "simple_loss" in state.params
    step = jax.jit(make_train_step(model, optimizer, config, blank=24))
    losses = []
    for _ in range(4):
        state, metrics = step(state, batch)
        assert bool(metrics["finite"])
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    from streamformer.train.loop.step import make_eval_loss

    loss_sum, count = jax.jit(make_eval_loss(model, config, blank=24))(state.params, batch)
    assert np.isfinite(float(loss_sum)) and float(count) == 3


# ------------------------------------------------------------------------------------------------------------
# End to end (in-process CLI)


def test_fit_loss_falls(trained):
    workdir, _ = trained
    losses = step_losses(workdir)
    assert sorted(losses) == list(range(1, 41))
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert last < 0.7 * first, (first, last)
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [20, 40]
    assert json.loads((workdir / "config.json").read_text())["model"]["transformer_num_layers"] == 1


def test_eval_and_transcribe_cli(trained, capsys, tmp_path):
    workdir, _ = trained
    assert cli(["eval", "--workdir", str(workdir), "--split", "dev", "--both", "--limit", "4"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["mode"], r["utterances"]) for r in results] == [("offline", 4), ("streaming", 4)]
    assert all(0.0 <= r["wer"] and 0.0 <= r["cer"] for r in results)
    assert (workdir / "eval_step40.json").exists()

    from streamformer.train.corpora import synth

    utterance = synth.synthesize(synth.SynthConfig(), "test", 0)
    synth.write_librispeech([utterance], tmp_path / "audio", audio_format="wav")
    audio = next((tmp_path / "audio").rglob("*.wav"))
    assert cli(["transcribe", "--workdir", str(workdir), str(audio)]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("final:")

    # Batch mode, and the same through an exported artifact run without the model code: every command the
    # README shows goes through the command line's dispatch.
    live, exported, artifact = tmp_path / "live.jsonl", tmp_path / "exported.jsonl", tmp_path / "artifact"
    assert cli(["transcribe", "--workdir", str(workdir), "--out", str(live), "--quiet", str(audio)]) == 0
    assert cli(["export", "--workdir", str(workdir), "--out", str(artifact), "--max-frames", "400"]) == 0
    assert (
        cli(["transcribe", "--exported", str(artifact), "--out", str(exported), "--quiet", str(audio)]) == 0
    )
    assert json.loads(exported.read_text())["text"] == json.loads(live.read_text())["text"]


def test_resume_with_other_model_is_refused(trained):
    workdir, config = trained
    from streamformer.train.workdir import Run
    from streamformer.train.workdir import must_match as _must_match

    other = config_lib.apply_overrides(config, ["model.transformer_num_layers=2"])
    run = Run(other, workdir)
    run.load_frontend()
    checkpoints = Checkpoints(workdir / "checkpoints", 3, _must_match(other, run.num_symbols))
    with pytest.raises(
        CheckpointMismatchError, match=r"model.transformer_num_layers: checkpoint 1, this run 2"
    ):
        checkpoints.check()
    checkpoints.close()
    assert cli(["fit", "--workdir", str(workdir), "--set", "model.transformer_num_layers=2", "--quiet"]) == 2
    assert json.loads((workdir / "config.json").read_text())["model"]["transformer_num_layers"] == 1


def test_config_that_does_not_fit_the_data(trained):
    workdir, config = trained
    from streamformer.train.workdir import Run

    run = Run(config_lib.apply_overrides(config, ["model.num_symbols=10"]), workdir)
    run.load_frontend()
    with pytest.raises(ValueError, match=r"model.num_symbols: expected at least .* = 25, got 10"):
        _ = run.num_symbols
    run = Run(config_lib.apply_overrides(config, ["model.input_dim=40"]), workdir)
    run.load_frontend()
    with pytest.raises(ValueError, match="model.input_dim: expected the features' dimension 80, got 40"):
        _ = run.num_symbols


# ------------------------------------------------------------------------------------------------------------
# Subprocesses: kill and resume, four devices


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path, cache, trained, micro_shards):
    """Killed mid-epoch and resumed (the train state and the data iterator's position from the checkpoint),
    training from shards ends with the parameters and losses of an uninterrupted run (the uninterrupted run is
    the ``trained`` fixture: same config, checkpoints every 20 steps instead of 5). An epoch is 6 batches, so
    the checkpoints at 10, 15... fall mid-epoch."""
    straight, _ = trained
    broken = tmp_path / "broken"
    args = [
        "fit",
        "--workdir",
        str(broken),
        *FIT,
        *shard_args(micro_shards),
        "--set",
        "loop.checkpoint_every=5",
    ]
    process = run_cli(*args, cache=cache)
    checkpoints = broken / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoints.exists() and any(
            p.name.isdigit() and int(p.name) >= 10 for p in checkpoints.iterdir()
        ):
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()) < 40

    process = run_cli(*args, cache=cache)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    config = micro_config("loop.steps=40")
    assert step_losses(broken) == step_losses(straight)
    assert sorted(step_losses(broken)) == list(range(1, 41))
    jax.tree.map(np.testing.assert_array_equal, final_params(straight, config), final_params(broken, config))


FOUR_DEVICES = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from streamformer.train import config as config_lib
    from streamformer.train.corpora import prepare
    from streamformer.train.loop.step import build_model
    from streamformer.train.loop.trainer import fit
    from pathlib import Path
    overrides, workdir = json.loads(sys.argv[1]), Path(sys.argv[2])
    config = config_lib.apply_overrides(config_lib.preset("tiny"), overrides)
    assert jax.device_count() == 4
    losses = {}
    for name, devices in (("four", jax.devices()), ("one", jax.devices()[:1])):
        (workdir / name).mkdir()
        examples, tokenizer, stats = prepare.prepare_split(config, workdir / name, "train")
        model = build_model(config.model, prepare.check_fits(config, tokenizer, stats))
        result = fit(config, workdir / name, model, examples, blank=tokenizer.blank_id, must_match={},
                     progress=False, devices=devices)
        losses[name] = [result.losses[s] for s in sorted(result.losses)]
    print(json.dumps(losses))
""")


def test_four_devices_give_the_losses_of_one(tmp_path, cache):
    overrides = MICRO + ["loop.steps=6", "loop.checkpoint_every=0"]
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
        JAX_COMPILATION_CACHE_DIR=str(cache),
    )
    result = subprocess.run(
        [sys.executable, "-c", FOUR_DEVICES, json.dumps(overrides), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses["four"]) == 6
    np.testing.assert_allclose(losses["four"], losses["one"], rtol=2e-5)


def test_stats_cli(tmp_path):
    from streamformer.features import GlobalStats

    out = tmp_path / "global_stats.json"
    assert cli(["stats", "--data", "synth", "--synth-size", "8", "--out", str(out)]) == 0
    stats = GlobalStats.load(out)
    assert stats.num_features == 80 and np.all(np.asarray(stats.invstddev) > 0)
