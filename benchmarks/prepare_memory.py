"""Peak memory and time of featurising a training split (train/corpora/prepare.py: prepare_split), by FEATURE_CHUNK.

    python benchmarks/prepare_memory.py /tmp/sp/espeak3/train 2048
    python benchmarks/prepare_memory.py /tmp/sp/espeak3/train 100000000    # the whole split's audio at once

One process per run (peak RSS is a high-water mark): the speech preset's front end, a fresh workdir (the BPE
model is trained on the split's transcripts first).
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    from streamformer.train.config import preset
    from streamformer.train.corpora import prepare
    from streamformer.train.workdir import Run

    split, chunk = sys.argv[1], int(sys.argv[2])
    prepare.FEATURE_CHUNK = chunk
    config = preset("speech")
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, train=split))
    started = time.perf_counter()
    examples = Run(config, Path(tempfile.mkdtemp())).prepare("train")
    features = sum(e.features.nbytes for e in examples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"FEATURE_CHUNK {chunk}: {len(examples)} utterances in {time.perf_counter() - started:.0f} s; "
        f"features {features / 2**30:.2f} GiB; peak RSS {peak / 2**30:.2f} GiB"
    )


if __name__ == "__main__":
    main()
