"""Faults a long run meets: preemption (SIGTERM), damaged checkpoints; and the TensorBoard files it writes.

One micro run of 20 steps (checkpoints at 10, 15, 20) is the reference; the other runs must match it exactly.
Training runs in subprocesses sharing a persistent compilation cache, as in test_train.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from streamformer.train.__main__ import main as cli
from streamformer.train.loop import integrity
from tests.conftest import shard_args
from tests.test_train import FIT, final_params, micro_config, run_cli, step_losses

STEPS = 20
FIT_ARGS = [a if a != "loop.steps=40" else f"loop.steps={STEPS}" for a in FIT] + [
    "--set",
    "loop.checkpoint_every=5",
]


def config():
    return micro_config(f"loop.steps={STEPS}", "loop.checkpoint_every=5")


def checkpoint_steps(workdir: Path) -> list[int]:
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def fit_args(micro_shards) -> list[str]:
    """The runs' arguments: the micro run, read from the micro corpus's shards."""
    return FIT_ARGS + shard_args(micro_shards)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache, fit_args) -> Path:
    """The uninterrupted reference run: 20 steps, checkpoints every 5 (the last 3 kept)."""
    workdir = tmp_path_factory.mktemp("straight")
    process = run_cli("fit", "--workdir", str(workdir), *fit_args, cache=cache)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output[-3000:]
    assert checkpoint_steps(workdir) == [10, 15, 20]
    return workdir


def wait_for_step(workdir: Path, process, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if step_losses_or_empty(workdir) and max(step_losses_or_empty(workdir)) >= step:
            return
        time.sleep(0.01)
    raise AssertionError("the run ended (or stalled) before the signal could be sent")


def step_losses_or_empty(workdir: Path) -> dict[int, float]:
    try:
        return step_losses(workdir)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


# ------------------------------------------------------------------------------------------------------------
# Preemption and TensorBoard


def tensorboard_scalars(logdir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_sigterm_checkpoints_exits_0_and_resume_matches_uninterrupted_run(
    tmp_path, cache, straight, fit_args
):
    preempted = tmp_path / "preempted"
    process = run_cli("fit", "--workdir", str(preempted), *fit_args, cache=cache)
    wait_for_step(preempted, process, 7)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 0, output[-3000:]
    (line,) = [line for line in output.splitlines() if line.startswith("stopped by SIGTERM")]
    stopped = int(line.split(" at step ")[1].split(":")[0])
    assert 7 < stopped < STEPS, line
    assert checkpoint_steps(preempted)[-1] == stopped  # saved at the step boundary, off the 5-step grid or on
    assert "resume" in line

    process = run_cli("fit", "--workdir", str(preempted), *fit_args, cache=cache)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    assert step_losses(preempted) == step_losses(straight)
    assert sorted(step_losses(preempted)) == list(range(1, STEPS + 1))
    jax.tree.map(
        np.testing.assert_array_equal, final_params(straight, config()), final_params(preempted, config())
    )

    # TensorBoard: the events of both runs read back as one run (the resumed run purged what it redid),
    # the same scalars as the JSON-lines log.
    for workdir in (straight, preempted):
        scalars = tensorboard_scalars(workdir / "tensorboard", "train/loss")
        assert sorted(scalars) == list(range(1, STEPS + 1))
        np.testing.assert_allclose(
            [scalars[s] for s in sorted(scalars)],
            [step_losses(straight)[s] for s in sorted(scalars)],
            rtol=1e-6,
        )
    assert sorted(tensorboard_scalars(straight / "tensorboard", "train/lr")) == list(range(1, STEPS + 1))


# ------------------------------------------------------------------------------------------------------------
# Damaged checkpoints


def damage(step_dir: Path, how: str) -> str:
    """Damages checkpoint folder ``step_dir`` as ``how`` says; returns the relative path of the file hit."""
    manifest = json.loads((step_dir / integrity.MANIFEST).read_text())["files"]
    victim = max((name for name in manifest if name.startswith("state/")), key=lambda n: manifest[n]["size"])
    path = step_dir / victim
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    elif how == "half-written":  # a save cut short: some files absent, no manifest yet
        path.unlink()
        (step_dir / integrity.MANIFEST).unlink()
        return integrity.MANIFEST
    return victim


@pytest.fixture
def damaged_copy(tmp_path, straight):
    def make(how: str) -> tuple[Path, str]:
        workdir = tmp_path / how
        shutil.copytree(straight, workdir)
        return workdir, damage(workdir / "checkpoints" / "20", how)

    return make


REASONS = {
    "truncated": "truncated",
    "flipped": "sha256 differs from the manifest",
    "half-written": "absent: the save never finished",
}


def test_every_checkpoint_has_a_manifest_that_verifies(straight):
    for step in checkpoint_steps(straight):
        integrity.verify(straight / "checkpoints" / str(step), step)


@pytest.mark.parametrize("how", sorted(REASONS))
def test_eval_and_transcribe_of_a_damaged_step_say_which_step_and_file(damaged_copy, capsys, how, tmp_path):
    workdir, victim = damaged_copy(how)
    audio = tmp_path / "missing.wav"  # never read: the checkpoint is refused first
    for command in (
        ["eval", "--workdir", str(workdir), "--split", "dev", "--limit", "2"],
        ["transcribe", "--workdir", str(workdir), str(audio)],
        ["eval", "--workdir", str(workdir), "--step", "20"],
    ):
        assert cli(command) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, captured.err
        (line,) = lines
        assert line.startswith("error: checkpoint step 20 is damaged: ") and victim in line, line
        assert REASONS[how] in line and "newest intact checkpoint is step 15" in line, line
        assert "Traceback" not in captured.err + captured.out and "Event loop is closed" not in captured.err
    assert cli(["eval", "--workdir", str(workdir), "--split", "dev", "--limit", "2", "--step", "15"]) == 0
    capsys.readouterr()


def test_fit_resumes_from_the_newest_intact_checkpoint(damaged_copy, cache, straight, fit_args):
    workdir, victim = damaged_copy("flipped")
    # As a user sees it in a fresh process: one line, and nothing at exit (orbax never opened the files).
    process = run_cli("eval", "--workdir", str(workdir), "--split", "dev", cache=cache)
    output = process.communicate(timeout=120)[0]
    assert process.returncode == 2 and len(output.strip().splitlines()) == 1, output[-3000:]
    assert output.startswith("error: checkpoint step 20 is damaged: ") and victim in output, output

    process = run_cli("fit", "--workdir", str(workdir), *fit_args, cache=cache)
    output = process.communicate(timeout=240)[0]
    assert process.returncode == 0, output[-3000:]
    warnings = [line for line in output.splitlines() if line.startswith("warning: checkpoint step")]
    assert len(warnings) == 1, output[-3000:]
    assert "step 20 is damaged" in warnings[0] and victim in warnings[0] and "sha256" in warnings[0]
    assert "skipped (moved to 20.damaged), resuming from step 15" in warnings[0]
    assert "Traceback" not in output and "Event loop is closed" not in output
    assert (workdir / "checkpoints" / "20.damaged").is_dir() and checkpoint_steps(workdir)[-1] == 20
    # Steps 16..20 were redone from checkpoint 15: the same losses and parameters as the straight run.
    assert step_losses(workdir) == step_losses(straight)
    jax.tree.map(
        np.testing.assert_array_equal, final_params(straight, config()), final_params(workdir, config())
    )


def test_preemption_guard_turns_sigterm_into_a_request_and_restores_the_handler():
    from streamformer.train.loop.preemption import PreemptionGuard

    before = signal.getsignal(signal.SIGTERM)
    with PreemptionGuard() as guard:
        assert not guard.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert guard.should_stop(2) and guard.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == before


def test_checkpoints_from_before_manifests_are_read_unverified(tmp_path, straight):
    from streamformer.train.loop.checkpoint import Checkpoints

    workdir = tmp_path / "old"
    shutil.copytree(straight, workdir)
    for step in checkpoint_steps(workdir):
        (workdir / "checkpoints" / str(step) / integrity.MANIFEST).unlink()
    checkpoints = Checkpoints(workdir / "checkpoints", 3)
    try:
        assert checkpoints.set_aside_damaged() == [] and checkpoints.latest_step() == 20
        checkpoints.verify(20)  # no error: no checkpoint of this run has a manifest
        (workdir / "checkpoints" / "10" / integrity.MANIFEST).write_text("{}")  # now the run writes them
        checkpoints.close()
        checkpoints = Checkpoints(workdir / "checkpoints", 3)  # a new reader verifies afresh
        with pytest.raises(integrity.DamagedCheckpointError, match="absent: the save never finished"):
            checkpoints.verify(20)
    finally:
        checkpoints.close()
