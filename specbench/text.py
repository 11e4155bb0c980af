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
