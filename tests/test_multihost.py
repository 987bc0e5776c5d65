"""Several hosts, for real: two processes joined by jax.distributed (coordinator on 127.0.0.1, gloo CPU
collectives), each with 2 host devices, train the micro model through the CLI's fit; the result equals one
process with 4 devices. The processes run tests/multihost_worker.py, which records what each one did."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from streamformer.train.loop import integrity
from tests.test_train import MICRO, final_params, micro_config, step_losses

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "multihost_worker.py"
# A constant learning rate after warm-up: the 2-process run stops at step 3 and resumes to 6 (a new
# loop.steps), which must not change the schedule. Adam's eps 1e-3 (not 1e-8): with a tiny eps, an entry whose
# gradient is ~0 moves by +-lr on the sign of rounding noise, and the two layouts sum gradients in another
# order; this test is about the layouts computing the same steps, not about that amplifier.
# Training reads the micro corpus's shards in 2 groups (shards 0 and 2, shards 1 and 3): each of the two
# processes reads only its group's shards, and the single process both, into the same batches.
OVERRIDES = MICRO + ["optim.decay=constant", "loop.checkpoint_every=0", "optim.eps=1e-3", "data.groups=2"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    workdir: Path, process_id: int, num_processes: int, port: int, devices: int, cache: Path, shards: Path
):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        STREAMFORMER_COMPILATION_CACHE=str(cache),
    )
    command = [sys.executable, str(WORKER), str(workdir), str(process_id), str(num_processes), str(port),
               json.dumps(OVERRIDES + [f"data.{split}={shards}" for split in ("train", "dev", "test")])]  # fmt: skip
    log = open(workdir / f"log_{process_id}.txt", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cache, micro_shards) -> tuple[Path, Path, list[dict], dict]:
    """The 2-process run and the 1-process, 4-device reference, started together."""
    multi, single = tmp_path_factory.mktemp("two_processes"), tmp_path_factory.mktemp("one_process")
    port = free_port()
    started = [start(multi, i, 2, port, 2, cache, micro_shards) for i in range(2)]
    started.append(start(single, 0, 1, 0, 4, cache, micro_shards))
    for (process, log), workdir, i in zip(started, [multi, multi, single], [0, 1, 0]):
        try:
            code = process.wait(timeout=420)
        finally:
            process.kill()
            log.close()
        assert code == 0, (workdir / f"log_{i}.txt").read_text()[-4000:]
    records = [json.loads((multi / f"process_{i}.json").read_text()) for i in range(2)]
    reference = json.loads((single / "process_0.json").read_text())
    return multi / "run", single / "run", records, reference


def test_two_processes_of_two_devices_train_as_one_of_four(runs):
    multi, single, records, reference = runs
    for i, record in enumerate(records):
        assert (record["process_index"], record["process_count"]) == (i, 2)
        assert (record["device_count"], record["local_device_count"]) == (4, 2)
    assert (reference["process_count"], reference["device_count"]) == (1, 4)

    losses, expected = step_losses(multi), step_losses(single)  # metrics.jsonl: written by process 0 only
    assert sorted(losses) == sorted(expected) == list(range(1, 7))
    np.testing.assert_allclose(
        [losses[s] for s in range(1, 7)], [expected[s] for s in range(1, 7)], rtol=2e-5
    )

    # Parameters: rtol 2e-5, and entries near zero within 2e-5 of their tensor's largest entry.
    config = micro_config(*OVERRIDES[len(MICRO) :], "loop.steps=6")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max()),
        final_params(multi, config),
        final_params(single, config),
    )


def test_each_process_reads_only_its_shards_and_its_share_of_every_batch(runs):
    _, _, records, reference = runs
    assert sorted(reference["loaded"]) == [str(s) for s in range(6)]
    for step, batch in reference["loaded"].items():
        first, second = records[0]["loaded"][step], records[1]["loaded"][step]
        assert len(first) == len(second) == 4  # batch 8 over 4 devices: 4 rows per process
        assert first + second == batch  # process 0 the first half of the global batch, process 1 the rest
    # and each read only the shards of its group: disjoint, covering the corpus (4 training shards)
    assert [r["shards_read"] for r in records] == [[0, 2], [1, 3]]
    assert reference["shards_read"] == [0, 1, 2, 3]


def test_checkpoints_are_written_once_and_restored_by_both(runs):
    multi, _, records, _ = runs
    checkpoints = multi / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["3", "6"]
    for step in (3, 6):
        integrity.verify(checkpoints / str(step), step)
        # one orbax checkpoint written by both processes together (each its own part of the state)
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= {
            p.name for p in (checkpoints / str(step) / "state").iterdir()
        }
    assert [r["restored"] for r in records] == [[3], [3]]  # the second fit resumed from step 3 on both


def test_evaluation_gathers_the_results_of_both_processes(runs):
    _, _, records, reference = runs
    dev = reference["decoded"]
    assert len(dev) == 8
    assert records[0]["decoded"] == dev[0::2] and records[1]["decoded"] == dev[1::2]
    for record in records:  # every process reports the whole split, as one process does
        assert record["dev"] == reference["dev"] and record["dev"]["utterances"] == 8
        assert record["hypotheses"] == reference["hypotheses"]
        assert record["gathered"] == [dev[0::2], dev[1::2]]
