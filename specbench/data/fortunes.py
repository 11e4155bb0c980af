"""Sentence source for the built-in corpus: Debian's ``fortunes`` data files (BSD licence).

Read at prepare time from the installed package (``/usr/share/games/fortunes``), never committed.
Records are split into sentences and filtered to plain, speakable English so that ASR can score them.
"""

from __future__ import annotations

import re
from pathlib import Path

from specbench.errors import DependencyError

DEFAULT_FORTUNE_DIR = Path("/usr/share/games/fortunes")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'\-]*[.!?]$")
_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")


def _records(text: str) -> list[str]:
    return [r for r in re.split(r"\n%\n", text) if r.strip()]


def _clean_record(record: str) -> str:
    lines = []
    for line in record.splitlines():
        stripped = line.strip()
        if stripped.startswith("--") or stripped.startswith("~"):  # attribution lines
            break
        lines.append(stripped)
    return " ".join(" ".join(lines).split())


def keep_sentence(sentence: str, min_words: int = 5, max_words: int = 20) -> bool:
    """Plain English sentence of ``min_words``..``max_words`` words, letters and basic punctuation only."""
    words = sentence.split()
    if not (min_words <= len(words) <= max_words):
        return False
    if not _ALLOWED.match(sentence) or _CAPS_WORD.search(sentence):
        return False
    if "--" in sentence or "''" in sentence or "  " in sentence:
        return False
    return all(any(c.isalpha() for c in w) for w in words)


def load_sentences(fortune_dir: Path = DEFAULT_FORTUNE_DIR, min_words: int = 5, max_words: int = 20) -> list[str]:
    """Distinct filtered sentences from every plain (non-offensive) fortune file, in a stable order."""
    if not fortune_dir.is_dir():
        raise DependencyError(f"fortune data not found at {fortune_dir}: install it with `apt-get install fortunes` (make setup does)")
    seen: set[str] = set()
    out: list[str] = []
    for path in sorted(fortune_dir.iterdir()):
        if not path.is_file() or path.suffix in {".dat", ".u8"} or path.is_symlink():
            continue
        try:
            text = path.read_text(encoding="utf-8", errors="ignore")
        except OSError:
            continue
        for record in _records(text):
            for sentence in _SENTENCE_SPLIT.split(_clean_record(record)):
                sentence = sentence.strip()
                key = sentence.lower()
                if key not in seen and keep_sentence(sentence, min_words, max_words):
                    seen.add(key)
                    out.append(sentence)
    return out
