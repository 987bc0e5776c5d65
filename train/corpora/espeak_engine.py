"""libespeak-ng through ctypes: the speech engine of the espeak corpus (``corpora/espeak.py``).

The library and its voice data come from the ``espeakng-loader`` wheel (pip only, no system package). The
engine runs in synchronous mode: ``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS)``, a synthesis callback that
collects the 22.05 kHz int16 samples and the word events, ``espeak_SetVoiceByName("<voice>+<variant>")``,
``espeak_SetParameter`` for rate, pitch and pitch range, ``espeak_Synth``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile

import numpy as np

__all__ = ["EspeakEngine", "EspeakUnavailableError", "seed_libc_rand"]

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_RATE, _PITCH, _RANGE = 1, 3, 4
_POS_CHARACTER, _CHARS_UTF8 = 1, 1


class EspeakUnavailableError(RuntimeError):
    """libespeak-ng (the espeakng-loader wheel) cannot be loaded."""


# --------------------------------------------------------------------------------------------------------
# Text.


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class EspeakEngine:
    """libespeak-ng in this process, synchronous: ``speak`` returns the int16 samples and the word onsets.

    libespeak-ng keeps static state across calls (e.g. its pitch-flutter phase), so an utterance's samples
    depend on what was spoken before in the same library instance. ``fresh=True`` loads a private copy of the
    library (a new instance with its own statics), so what it speaks depends on its own calls only; ``close``
    unloads it.
    """

    def __init__(self, fresh: bool = False) -> None:
        self._copy: str | None = None
        try:
            import espeakng_loader

            path = espeakng_loader.get_library_path()
            data_path = espeakng_loader.get_data_path()
            if fresh:
                handle, self._copy = tempfile.mkstemp(prefix="libespeak-ng-", suffix=".so")
                os.close(handle)
                shutil.copyfile(path, self._copy)
                path = self._copy
            self._lib = ctypes.CDLL(path)
        except (ImportError, OSError, RuntimeError) as error:
            raise EspeakUnavailableError(
                f"cannot load libespeak-ng from the espeakng-loader wheel ({error}): "
                "pip install 'streamformer[train]'"
            ) from error
        lib = self._lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        self.sample_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise EspeakUnavailableError(f"espeak_Initialize failed (data path {data_path})")
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int]] = []
        self._callback = _CALLBACK(self._collect)  # kept alive: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def close(self) -> None:
        """Terminate the library and, for a private copy, unload and delete it."""
        self._lib.espeak_Terminate()
        if self._copy is not None:
            import _ctypes

            _ctypes.dlclose(self._lib._handle)
            os.unlink(self._copy)
            self._copy = None

    def _collect(self, samples, count, events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._words.append((events[i].text_position, events[i].sample))
            i += 1
        return 0

    def speak(
        self, text: str, voice: str, rate: int = 175, pitch: int = 50, pitch_range: int = 50
    ) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """(N,) int16 samples at ``sample_rate`` and, per word event, (1-based character position, sample)."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"voice: espeak-ng has no voice {voice!r}")
        for parameter, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._words = [], []
        encoded = text.encode("utf-8")
        status = self._lib.espeak_Synth(
            encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
        )
        if status != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r} ({voice})")
        audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return audio, list(self._words)


# --------------------------------------------------------------------------------------------------------
# The corpus.


def seed_libc_rand(seed: int) -> None:
    """libespeak-ng draws from the C library's rand() (noise sources), process-global state: seed it."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None)
    _LIBC.srand(ctypes.c_uint(seed & 0xFFFFFFFF))


_LIBC = None
