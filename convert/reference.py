"""torchaudio 2.8's model code, importable with torch alone.

torchaudio 2.8 is the reference for every model here, but no torchaudio build installs beside torch 2.13 on
these machines, and 2.9 removed ConvEmformer and rnnt_loss. Its model and feature files are pure PyTorch, so
this module fetches the 2.8.0 wheel once (``pip download``, about 4 MB), copies the files we need into a cache
folder, and wraps them in a thin stub ``torchaudio`` package (no compiled extension, no I/O backends):

- ``torchaudio.models``: Emformer, RNNT, emformer_rnnt_model, emformer_rnnt_base, RNNTBeamSearch, Hypothesis
- ``torchaudio.prototype.models``: ConvEmformer
- ``torchaudio.functional`` and ``torchaudio.transforms`` (MelSpectrogram and friends)
- ``torchaudio.pipelines.rnnt_pipeline`` (the Emformer RNN-T feature pipeline helpers)

``load()`` returns the stub ``torchaudio`` module. It raises ``ReferenceUnavailable`` with the reason when the
wheel cannot be fetched: tests let that fail loudly instead of skipping.

The cache lives in ``$STREAMFORMER_CACHE`` (default ``~/.cache/streamformer``); ``$STREAMFORMER_TORCHAUDIO_WHEEL``
may name an already downloaded wheel.
"""

from __future__ import annotations

import glob
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType

VERSION = "2.8.0"

# Files copied verbatim from the wheel.
_FILES = [
    "models/emformer.py",
    "models/rnnt.py",
    "models/rnnt_decoder.py",
    "prototype/models/conv_emformer.py",
    "functional/__init__.py",
    "functional/_alignment.py",
    "functional/filtering.py",
    "functional/functional.py",
    "transforms/__init__.py",
    "transforms/_transforms.py",
    "transforms/_multi_channel.py",
    "pipelines/rnnt_pipeline.py",
]

# Stub modules replacing the parts of torchaudio that need its compiled extension.
_STUBS = {
    "__init__.py": f'__version__ = "{VERSION}"  # stub package around torchaudio {VERSION} model code\n',
    "_internal/__init__.py": "",
    "_internal/module_utils.py": (
        "import importlib.util\n\n"
        "def is_module_available(*modules):\n"
        "    return all(importlib.util.find_spec(m) is not None for m in modules)\n\n"
        "def _identity(obj, *args, **kwargs):\n    return obj\n\n"
        "dropping_support = dropping_class_support = dropping_const_support = _identity\n\n"
        "def deprecated(direction, version=None, remove=False):\n    return _identity\n"
    ),
    "_extension/__init__.py": (
        "_IS_TORCHAUDIO_EXT_AVAILABLE = False\n_IS_RIR_AVAILABLE = False\n\n"
        "def fail_if_no_align(func):\n    return func\n"
    ),
    "models/__init__.py": (
        "from .emformer import Emformer\n"
        "from .rnnt import RNNT, emformer_rnnt_base, emformer_rnnt_model\n"
        "from .rnnt_decoder import Hypothesis, RNNTBeamSearch\n"
    ),
    "prototype/__init__.py": "",
    "prototype/models/__init__.py": "from .conv_emformer import ConvEmformer\n",
    "pipelines/__init__.py": "",
}


class ReferenceUnavailable(RuntimeError):
    """The torchaudio 2.8 reference code could not be set up."""


def cache_dir() -> Path:
    root = os.environ.get("STREAMFORMER_CACHE") or os.path.join(Path.home(), ".cache", "streamformer")
    return Path(root) / f"torchaudio-{VERSION}"


def _download_wheel(into: Path) -> Path:
    given = os.environ.get("STREAMFORMER_TORCHAUDIO_WHEEL")
    if given:
        return Path(given)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "--disable-pip-version-check",
        f"torchaudio=={VERSION}",
        "-d",
        str(into),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = glob.glob(str(into / "torchaudio-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ReferenceUnavailable(
            f"could not download torchaudio=={VERSION} with {' '.join(cmd)!r}:\n{result.stderr.strip()}"
        )
    return Path(wheels[0])


def _build(target: Path) -> None:
    """Builds the stub package in a temporary folder next to ``target``, then renames it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        wheel = _download_wheel(work)
        package = work / "pkg" / "torchaudio"
        with zipfile.ZipFile(wheel) as archive:
            for name in _FILES:
                out = package / name
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(archive.read(f"torchaudio/{name}"))
        for name, text in _STUBS.items():
            out = package / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text)
        (work / "pkg" / "COMPLETE").write_text(wheel.name + "\n")
        try:
            os.replace(work / "pkg", target)
        except OSError:
            if not (target / "COMPLETE").exists():  # someone else finished first: theirs is as good
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load() -> ModuleType:
    """Returns the stub ``torchaudio`` package around torchaudio 2.8's pure-PyTorch code, setting it up once."""
    try:
        import torch  # noqa: F401
    except ImportError as error:
        raise ReferenceUnavailable(
            "the torchaudio reference needs torch: pip install torch==2.13.0"
        ) from error
    loaded = sys.modules.get("torchaudio")
    if loaded is not None:
        if getattr(loaded, "__version__", "").startswith(VERSION) and hasattr(loaded, "__path__"):
            _import_all()
            return loaded
        raise ReferenceUnavailable(
            f"another torchaudio ({getattr(loaded, '__version__', '?')}) is already imported"
        )
    target = cache_dir()
    if not (target / "COMPLETE").exists():
        _build(target)
    sys.path.insert(0, str(target))
    try:
        module = importlib.import_module("torchaudio")
    finally:
        sys.path.remove(str(target))
    if not str(Path(module.__file__)).startswith(str(target)):
        raise ReferenceUnavailable(
            f"imported torchaudio from {module.__file__}, not from the reference {target}"
        )
    _import_all()
    return module


def _import_all() -> None:
    for name in ("models", "prototype.models", "functional", "transforms", "pipelines.rnnt_pipeline"):
        importlib.import_module(f"torchaudio.{name}")
