"""Shared fixtures. The torchaudio 2.8 reference sets itself up (see convert/reference.py) and fails, never
skips, when it cannot: parity is the point of these tests."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")

import numpy as np
import pytest
import torch

from streamformer.convert import reference

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def torchaudio_ref():
    """The stub ``torchaudio`` package around torchaudio 2.8's pure-PyTorch model and feature code."""
    return reference.load()


@pytest.fixture
def rng():
    return np.random.default_rng(0)
