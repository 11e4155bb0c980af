"""Text front end: espeak-ng phonemes and the model's text-token vocabulary.

The model reads phonemes, not characters: ``espeak-ng -q -x`` (ASCII phoneme mnemonics, en-us) turns
each sentence into a string, and every character of it is one text token. The vocabulary is the fixed
set of printable ASCII characters, so it never needs fitting and never changes between corpora.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from specbench.errors import DependencyError

PAD_ID = 0
UNK_ID = 1
_FIRST_CHAR = 32  # ' '
_LAST_CHAR = 126  # '~'
TEXT_VOCAB_SIZE = 2 + (_LAST_CHAR - _FIRST_CHAR + 1)
PHONEME_VOICE = "en-us"


def espeak_binary() -> str:
    """Path of espeak-ng, or a DependencyError that says how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DependencyError("espeak-ng not found on PATH: install it with `apt-get install espeak-ng` (make setup does)")
    return path


def clean_phonemes(raw: str) -> str:
    """espeak prints one line per clause; join them with single spaces."""
    return " ".join(part.strip() for part in raw.splitlines() if part.strip())


@lru_cache(maxsize=65536)
def phonemize_one(text: str, voice: str = PHONEME_VOICE) -> str:
    """ASCII phoneme string of ``text`` from ``espeak-ng -q -x``."""
    proc = subprocess.run(
        [espeak_binary(), "-q", "-x", "-v", voice, "--", text],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise DependencyError(f"espeak-ng failed on {text[:40]!r}: {proc.stderr.strip()} (check the espeak-ng install)")
    return clean_phonemes(proc.stdout)


def phonemize(texts: list[str], voice: str = PHONEME_VOICE, workers: int = 2) -> list[str]:
    """Phonemize many sentences in parallel subprocesses (order preserved)."""
    espeak_binary()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda t: phonemize_one(t, voice), texts))


def encode_phonemes(phonemes: str) -> list[int]:
    """Map each character to its text-token id (printable ASCII → 2.., anything else → UNK)."""
    out: list[int] = []
    for ch in phonemes:
        code = ord(ch)
        out.append(code - _FIRST_CHAR + 2 if _FIRST_CHAR <= code <= _LAST_CHAR else UNK_ID)
    return out


def decode_phonemes(ids: list[int]) -> str:
    """Inverse of :func:`encode_phonemes` (UNK → '?')."""
    return "".join(chr(i - 2 + _FIRST_CHAR) if i >= 2 else "?" for i in ids if i != PAD_ID)


def encode_phones(phones: str, vocab: list[str]) -> list[int]:
    """Text ids of an aligned model: ``2 + vocab.index(p)`` for each space-separated phone token
    (unknown tokens → UNK)."""
    index = {p: i + 2 for i, p in enumerate(vocab)}
    return [index.get(p, UNK_ID) for p in phones.split()]


@lru_cache(maxsize=65536)
def phones_of_text(text: str) -> str:
    """The phone tokens espeak-ng speaks for ``text`` (en-us; the aligned models' text input)."""
    from specbench.data.espeak_lib import espeak_library

    return " ".join(espeak_library().speak(text, PHONEME_VOICE).phones)


def durations_from_starts(starts: list[float], n_frames: int, frame_rate: float) -> np.ndarray:
    """Frames per phone from phone start times (seconds), summing to ``n_frames``.

    Phone ``i`` owns frames ``[b_i, b_{i+1})`` with ``b_i = round(starts_i × frame_rate)`` made
    non-decreasing and clipped to ``[0, n_frames]``, ``b_0 = 0`` (leading silence belongs to the first
    phone) and the last phone running to ``n_frames``.
    """
    b = np.clip(np.round(np.asarray(starts, dtype=np.float64) * frame_rate).astype(np.int64), 0, n_frames)
    if len(b) == 0:
        return np.zeros(0, dtype=np.int64)
    b[0] = 0
    b = np.maximum.accumulate(b)
    return np.diff(np.append(b, n_frames)).astype(np.int64)
