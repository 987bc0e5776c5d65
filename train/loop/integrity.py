"""Checkpoint integrity: a manifest of every file's size and sha256, written once orbax has finished a save,
checked before a checkpoint is read.

orbax makes a save atomic (it writes a temporary folder and renames it), but nothing notices a checkpoint
damaged afterwards: a copy cut short, a disk or network store flipping bytes, a folder assembled by hand.
Reading one gives pages of tensorstore errors. With a manifest, a damaged checkpoint is found before orbax
opens it, and the error names the step and the file:

- a file shorter or longer than recorded: truncated (or grown);
- a file whose sha256 differs: its bytes changed;
- a file recorded but absent: missing;
- no manifest at all: the save never finished (half-written), or the checkpoint predates manifests.

Layout: <checkpoints>/<step>/manifest.json = {"format": 1, "files": {relative path: {"size", "sha256"}}}.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from streamformer.io import atomic_write_text

__all__ = ["MANIFEST", "DamagedCheckpointError", "write_manifest", "verify"]

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class DamagedCheckpointError(ValueError):
    """A checkpoint's files do not match its manifest (or it has none). ``step``, ``file`` and ``reason`` say
    which and why; str() is one line."""

    def __init__(self, step: int, directory: Path, file: str, reason: str):
        self.step, self.directory, self.file, self.reason = step, directory, file, reason
        super().__init__(f"checkpoint step {step} is damaged: {directory / file}: {reason}")


def _files(directory: Path) -> list[str]:
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            relative = (Path(root) / name).relative_to(directory).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike) -> Path:
    """Records the size and sha256 of every file under ``directory`` (a finished checkpoint step) in
    ``directory/manifest.json``, atomically; returns its path."""
    directory = Path(directory)
    files = {
        name: {"size": (directory / name).stat().st_size, "sha256": _sha256(directory / name)}
        for name in _files(directory)
    }
    path = directory / MANIFEST
    atomic_write_text(path, json.dumps({"format": 1, "files": files}, indent=1, sort_keys=True) + "\n")
    return path


def verify(directory: str | os.PathLike, step: int) -> None:
    """Raises DamagedCheckpointError for the first file of checkpoint ``step`` (in ``directory``) that is
    missing, has another size or another sha256 than its manifest records, or when there is no manifest."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise DamagedCheckpointError(
            step, directory, MANIFEST, "absent: the save never finished (half-written checkpoint)"
        )
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise DamagedCheckpointError(step, directory, MANIFEST, f"unreadable ({error})") from None
    for name, expected in sorted(files.items()):
        path = directory / name
        if not path.is_file():
            raise DamagedCheckpointError(step, directory, name, "missing")
        size = path.stat().st_size
        if size != expected["size"]:
            what = "truncated" if size < expected["size"] else "longer than written"
            raise DamagedCheckpointError(
                step, directory, name, f"{what}: {size} bytes, the manifest says {expected['size']}"
            )
        if _sha256(path) != expected["sha256"]:
            raise DamagedCheckpointError(
                step, directory, name, "sha256 differs from the manifest: its bytes changed"
            )
