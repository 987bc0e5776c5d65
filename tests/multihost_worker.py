"""One process of tests/test_multihost.py's runs (not a test module).

python tests/multihost_worker.py WORKDIR PROCESS_ID NUM_PROCESSES PORT OVERRIDES_JSON

With NUM_PROCESSES 2 it joins a jax.distributed run (coordinator 127.0.0.1:PORT) and trains through the fit
command (streamformer.train.commands.fit) twice: 3 steps, then (resuming from that checkpoint) to 6, followed
by the dev evaluation. With 1 it is the single-process reference: 6 steps straight. It records which
utterances it put on its devices at every step, the shards it read, which it decoded, the step it restored,
and the dev results, in WORKDIR/process_<id>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU

from streamformer.train import evaluation as evaluate  # noqa: E402
from streamformer.train.commands.fit import fit  # noqa: E402
from streamformer.train.config import apply_overrides, preset  # noqa: E402
from streamformer.train.corpora import shards  # noqa: E402
from streamformer.train.loop import checkpoint, loader, multihost  # noqa: E402
from streamformer.train.loop.multihost import initialize  # noqa: E402
from streamformer.train.workdir import enable_compilation_cache  # noqa: E402

workdir, process_id, num_processes, port = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
overrides = json.loads(sys.argv[5])
record: dict = {"loaded": {}, "decoded": [], "restored": [], "shards_read": []}

batch_of = loader.TrainBatches.batch


def recording_batch(self, step):
    batch = batch_of(self, step)
    record["loaded"][int(step)] = [i for i, v in zip(batch.ids, batch.valid) if v]
    return batch


reader_of = shards.ShardSource._reader


def recording_reader(self, shard):
    if shard not in record["shards_read"]:
        record["shards_read"].append(shard)
    return reader_of(self, shard)


decode = evaluate.decode


def recording_decode(model, variables, examples, *args, **kwargs):
    record["decoded"] += [e.id for e in examples]
    return decode(model, variables, examples, *args, **kwargs)


restore = checkpoint.Checkpoints.restore


def recording_restore(self, *args, **kwargs):
    state = restore(self, *args, **kwargs)
    record["restored"].append(int(state.step))
    return state


loader.TrainBatches.batch = recording_batch
shards.ShardSource._reader = recording_reader
evaluate.decode = recording_decode
checkpoint.Checkpoints.restore = recording_restore

run_dir = workdir / "run"
config = apply_overrides(preset("tiny"), overrides)
if num_processes > 1:
    initialize(f"127.0.0.1:{port}", num_processes, process_id)
if os.environ.get("STREAMFORMER_COMPILATION_CACHE"):  # as the CLI does
    enable_compilation_cache(os.environ["STREAMFORMER_COMPILATION_CACHE"])
if num_processes > 1:
    fit(run_dir, apply_overrides(config, ["loop.steps=3"]), evaluate=False, progress=False)
summary = fit(run_dir, apply_overrides(config, ["loop.steps=6"]), progress=False)
record.update(
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    device_count=jax.device_count(),
    local_device_count=jax.local_device_count(),
    dev={k: summary["dev"][k] for k in ("wer", "cer", "utterances", "words", "word_errors", "char_errors")},
    hypotheses=[e["hypothesis"] for e in summary["dev"]["examples"]],
    # the transcripts' gathering, on strings that differ between processes (a micro model after 6 steps
    # transcribes everything as "")
    shards_read=sorted(record["shards_read"]),
    gathered=multihost.gather_strings(record["decoded"]) if num_processes > 1 else None,
)
(workdir / f"process_{process_id}.json").write_text(json.dumps(record))
