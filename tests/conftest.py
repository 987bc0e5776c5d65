"""Shared fixtures. The torchaudio 2.8 reference sets itself up (see convert/reference.py) and fails, never
skips, when it cannot: parity is the point of these tests.

One persistent JAX compilation cache serves the whole test run: both xdist workers and every CLI subprocess
(``python -m train`` reads STREAMFORMER_COMPILATION_CACHE), so a program that several test files or processes
compile is compiled once. It is kept between runs, beside the torchaudio reference, in
$STREAMFORMER_CACHE/jax-tests (default ~/.cache/streamformer/jax-tests; STREAMFORMER_TEST_CACHE moves it);
entries are keyed by the program and the jax version, so a stale one is never used.
"""

import os
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
COMPILATION_CACHE = Path(
    os.environ.get("STREAMFORMER_TEST_CACHE")
    or Path(os.environ.get("STREAMFORMER_CACHE") or Path.home() / ".cache" / "streamformer") / "jax-tests"
)
COMPILATION_CACHE.mkdir(parents=True, exist_ok=True)
os.environ["STREAMFORMER_COMPILATION_CACHE"] = str(COMPILATION_CACHE)  # subprocesses of the CLI
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(COMPILATION_CACHE)  # subprocesses that import jax themselves
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.3"

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from streamformer.convert import reference  # noqa: E402

jax.config.update("jax_compilation_cache_dir", str(COMPILATION_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.3)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def cache() -> Path:
    """The test run's persistent compilation cache (for tests that pass it on explicitly)."""
    return COMPILATION_CACHE


@pytest.fixture(scope="session")
def micro_shards(tmp_path_factory, cache) -> Path:
    """The micro corpus of tests/test_train.py (48 / 8 / 8 synthesized utterances) as a shard folder
    (``python -m train prepare``) of 12 utterances a shard: 4 training shards. Prepared once per test worker."""
    from streamformer.train.corpora.prepare_shards import prepare_shards
    from tests.test_train import micro_config

    out = tmp_path_factory.mktemp("micro_shards") / "shards"
    prepare_shards(
        micro_config(), out, shard_size=12, workers=2, compilation_cache=str(cache), say=lambda _: None
    )
    return out


def shard_args(folder: Path) -> list[str]:
    """The command-line overrides that train (and evaluate) from a shard folder."""
    return [a for split in ("train", "dev", "test") for a in ("--set", f"data.{split}={folder}")]


@pytest.fixture(scope="session")
def torchaudio_ref():
    """The stub ``torchaudio`` package around torchaudio 2.8's pure-PyTorch model and feature code."""
    return reference.load()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
