"""espeak-ng through its C library: audio together with the phonemes it speaks and WHEN it speaks them.

The command line only prints phonemes; the library's synthesis callback also reports a phoneme event
with the sample index at which each phoneme starts (``espeakINITIALIZE_PHONEME_EVENTS``). That is an
exact alignment for free: the synthesiser itself decides the durations, so no forced aligner is
needed. The library keeps global state and is not thread-safe: use one :class:`EspeakLibrary` per
process (``espeak_library()`` caches it) and parallelise with processes, not threads.

Phone tokens: the event's ASCII mnemonic (the same scheme as ``espeak-ng -x``: ``h @ l oU``), with the
stress mark of ``-x`` (``'`` primary, ``,`` secondary) prefixed to the vowel it precedes (``'oU``);
pauses are ``_:`` and ``_``.
"""

from __future__ import annotations

import ctypes
import threading
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from specbench.errors import DependencyError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE = 1
_PARAM_PITCH = 3
STRESS_MARKS = "',"
LIBRARY = "libespeak-ng.so.1"  # Debian's package name (find_library needs ldconfig, absent in some sandboxes)


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Spoken:
    """One synthesis: ``wav`` (float32 mono at ``sample_rate``), the phones spoken and their start times.

    ``starts[i]`` is the time (seconds) at which ``phones[i]`` begins; phone i lasts until
    ``starts[i + 1]`` and the last one until the end of ``wav``.
    """

    wav: np.ndarray
    sample_rate: int
    phones: list[str]
    starts: list[float]


class EspeakLibrary:
    """The process's libespeak-ng, initialised for synchronous synthesis with phoneme events."""

    def __init__(self) -> None:
        try:
            self.lib = ctypes.CDLL(LIBRARY)
        except OSError:
            raise DependencyError("libespeak-ng not found: install espeak-ng with `apt-get install espeak-ng` (make setup does)") from None
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.sample_rate = int(self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT))
        if self.sample_rate <= 0:
            raise DependencyError("libespeak-ng failed to initialise (espeak-ng-data missing?): reinstall espeak-ng")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[str, int]] = []
        self._callback = _Callback(self._on_audio)  # kept referenced: the library holds a raw pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()
        # espeak-ng draws breath noise (voices with a `breath` line, e.g. variant f2) and other jitter from
        # the C library's process-wide rand(): seeded per utterance in speak(), so audio and timing are a
        # function of (text, voice, rate, pitch) alone, not of what the process did before
        self._libc = ctypes.CDLL(None)

    def _on_audio(self, wav: ctypes.Array, n: int, events: ctypes.Array) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].id.string.decode("ascii", "replace"), int(events[i].sample)))
            i += 1
        return 0

    def _set_voice(self, voice: str, rate: int | None, pitch: int | None) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise DependencyError(f"espeak-ng has no voice {voice!r}: list voices with `espeak-ng --voices` and variants with `espeak-ng --voices=variant`")
        if rate is not None:
            self.lib.espeak_SetParameter(_PARAM_RATE, int(rate), 0)
        if pitch is not None:
            self.lib.espeak_SetParameter(_PARAM_PITCH, int(pitch), 0)

    def speak(self, text: str, voice: str = "en-us", rate: int | None = None, pitch: int | None = None) -> Spoken:
        """Synthesise ``text``; phones carry the stress marks of :meth:`x_phonemes`.

        Deterministic: libc's ``rand()``, which espeak-ng's noise sources draw from, is reseeded with
        ``crc32(voice|rate|pitch|text)`` first, so the same call gives the same samples and phone starts
        in any process, after any other synthesis.
        """
        with self._lock:
            self._set_voice(voice, rate, pitch)
            self._libc.srand(ctypes.c_uint(zlib.crc32(f"{voice}|{rate}|{pitch}|{text}".encode())))
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            err = self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != 0:
                raise DependencyError(f"espeak-ng could not synthesise {text[:40]!r} (error {err})")
            pcm = np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int16)
            events = self._events
            x = self._x_phonemes(text)
        wav = pcm.astype(np.float32) / 32768.0
        names = [e[0] for e in events]
        starts = [min(e[1], len(wav)) / self.sample_rate for e in events]
        return Spoken(wav, self.sample_rate, attach_stress(names, x), starts)

    def _x_phonemes(self, text: str) -> str:
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        parts = []
        while ptr.value:
            out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, 0)
            if out:
                parts.append(out.decode("ascii", "replace").strip())
        return " ".join(p for p in parts if p)

    def x_phonemes(self, text: str, voice: str = "en-us") -> str:
        """The ``espeak-ng -x`` phoneme string of ``text`` (ASCII mnemonics with stress marks)."""
        with self._lock:
            self._set_voice(voice, None, None)
            return self._x_phonemes(text)


def attach_stress(phones: list[str], x: str) -> list[str]:
    """Prefix each vowel of ``phones`` with the stress mark that precedes it in the ``-x`` string ``x``.

    ``x`` spells the same phones in order, with stress marks, spaces and no pauses; the phones are
    matched left to right. Where the two disagree (rare: espeak may respell a clause), the remaining
    phones are returned without stress rather than guessed.
    """
    out: list[str] = []
    pos = 0
    n = len(x)
    for k, ph in enumerate(phones):
        if ph.startswith("_"):
            out.append(ph)
            continue
        stress = ""
        while pos < n and (x[pos] in STRESS_MARKS or x[pos].isspace()):
            if x[pos] in STRESS_MARKS:
                stress = x[pos]
            pos += 1
        if x.startswith(ph, pos):
            out.append(stress + ph)
            pos += len(ph)
        else:
            return out + phones[k:]
    return out


@lru_cache(maxsize=1)
def espeak_library() -> EspeakLibrary:
    """This process's :class:`EspeakLibrary` (initialised on first use)."""
    return EspeakLibrary()
