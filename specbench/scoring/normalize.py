"""Text normalisers applied to both reference and ASR hypothesis before WER/CER.

Each normaliser is a pure ``str -> str`` function registered in :data:`NORMALIZERS`; every result row
records the matching version id from :data:`NORMALIZER_IDS`, because WER numbers computed with
different normalisers are not comparable.

* ``seed-tts-eval`` (id ``seed-tts-eval-v1``): the seed-tts-eval convention — lower-case, delete every
  punctuation character except the apostrophe, collapse whitespace. No number or spelling
  normalisation. Punctuation is *deleted*, not replaced by a space (as seed-tts-eval does), so
  ``"well-known"`` becomes ``"wellknown"``. One deliberate deviation: the typographic apostrophes
  U+2019 and U+02BC are first mapped to ``'`` so ``don’t`` and ``don't`` score the same (seed-tts-eval
  would delete the curly one and keep the straight one).
* ``whisper-english``: OpenAI Whisper's ``EnglishTextNormalizer`` (package ``whisper-normalizer``),
  which also expands contractions, spells numbers as digits and maps British to American spelling.
"""

from __future__ import annotations

import importlib.metadata
import string
import unicodedata
from collections.abc import Callable
from functools import lru_cache

from specbench.errors import DependencyError

_APOSTROPHE_VARIANTS = {0x2019: "'", 0x02BC: "'"}


class _PunctuationTable(dict[int, str | None]):
    """``str.translate`` table deleting punctuation, filled lazily per code point.

    Building the full table would mean classifying all 1.1 M code points at import time; texts only
    ever use a few hundred distinct characters, so classify on first sight and cache.
    """

    _ASCII = set(string.punctuation) - {"'"}

    def __missing__(self, cp: int) -> str | None:
        ch = chr(cp)
        # Unicode P* covers punctuation in every script; string.punctuation adds the ASCII symbols
        # ($ + < = > ^ ` | ~) that seed-tts-eval also strips although Unicode files them under S*.
        drop = ch != "'" and (unicodedata.category(ch).startswith("P") or ch in self._ASCII)
        value = None if drop else ch
        self[cp] = value
        return value


_PUNCT_TABLE = _PunctuationTable(_APOSTROPHE_VARIANTS)


def seed_tts_eval(text: str) -> str:
    """seed-tts-eval normalisation: ``' '.join(lower(delete_punct_except_apostrophe(text)).split())``.

    Unicode punctuation (category P*) and ASCII ``string.punctuation`` are deleted, ``'`` is kept
    (U+2019/U+02BC are treated as ``'``), text is lower-cased and runs of whitespace become one space
    with none at the ends. Numbers are left as written.
    """
    return " ".join(text.translate(_PUNCT_TABLE).lower().split())


@lru_cache(maxsize=1)
def _english_normalizer() -> Callable[[str], str]:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        raise DependencyError(
            "the whisper-english normaliser needs the whisper-normalizer package: run `make setup` or `pip install whisper-normalizer`"
        ) from None
    return EnglishTextNormalizer()


def whisper_english(text: str) -> str:
    """Whisper's ``EnglishTextNormalizer`` (contractions, numbers → digits, US spelling, no punctuation)."""
    return _english_normalizer()(text)


def _whisper_normalizer_version() -> str:
    try:
        return importlib.metadata.version("whisper-normalizer")
    except importlib.metadata.PackageNotFoundError:
        return "missing"


NORMALIZERS: dict[str, Callable[[str], str]] = {
    "seed-tts-eval": seed_tts_eval,
    "whisper-english": whisper_english,
}

NORMALIZER_IDS: dict[str, str] = {
    "seed-tts-eval": "seed-tts-eval-v1",
    "whisper-english": f"whisper-english@whisper-normalizer-{_whisper_normalizer_version()}",
}


def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser registered as ``name``; ConfigError naming the choices for an unknown name."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        from specbench.errors import ConfigError

        raise ConfigError(f"unknown normalizer '{name}': choose one of {', '.join(NORMALIZERS)}") from None
