"""ASR repetition loops: one flag per transcript, ``asr_loop`` (docs/metrics.md).

Whisper decoding at temperature 0 can fall into a loop on unclear audio and repeat a phrase until its
token budget runs out ("to be here to be here ..."); one such clip moves a mean WER by several points.
A transcript is flagged when EITHER

* its gzip compression ratio (UTF-8 bytes / zlib-compressed bytes, what Whisper computes) exceeds
  :data:`COMPRESSION_RATIO_MAX` = 2.4, Whisper's own ``compression_ratio_threshold`` — long loops; or
* one phrase of 1 to :data:`MAX_NGRAM` = 8 words is repeated back to back at least
  :data:`MIN_COPIES` = 3 times, the copies covering at least :data:`MIN_LOOP_WORDS` = 8 words (words:
  lower-cased runs of letters, digits and apostrophes) — loops too short to compress well
  ("to be here to be here to be here", ratio 1.95), which the ratio misses.

The word floor keeps emphasis and stutters out ("no, no, no", "very, very, very, very weak": Whisper
wrote the latter for a codec clip); a single word must come 8 times in a row. The flag depends on the
transcript alone, not on the reference or the normaliser, so every scorer's rows use the same
definition (:data:`LOOP_RULE`).
"""

from __future__ import annotations

import re
import zlib

#: Whisper's ``compression_ratio_threshold``: above it, Whisper itself treats a segment as a failed decode.
COMPRESSION_RATIO_MAX = 2.4
#: The longest phrase (in words) the repeated-phrase rule looks for.
MAX_NGRAM = 8
#: Back-to-back copies of one phrase that can make a loop ...
MIN_COPIES = 3
#: ... when together they cover at least this many words.
MIN_LOOP_WORDS = 8
#: Version id of the rule (recorded in score rows next to the flag).
LOOP_RULE = f"zlib>{COMPRESSION_RATIO_MAX}|{MIN_COPIES}x1-{MAX_NGRAM}gram>={MIN_LOOP_WORDS}w-v1"

_WORD = re.compile(r"[\w']+")


def compression_ratio(text: str) -> float:
    """``len(utf8) / len(zlib.compress(utf8))`` (Whisper's definition); 0.0 for an empty text."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def repeated_words(text: str, max_n: int = MAX_NGRAM, min_copies: int = MIN_COPIES) -> int:
    """The most words covered by ``min_copies`` or more back-to-back copies of one phrase of 1..``max_n``
    words in ``text`` (whole copies only; 0 when no phrase repeats that often).

    Words are the lower-cased ``[\\w']+`` runs, so punctuation between copies ("pah, pah, pah") does not
    hide them. Example: "and to be here to be here to be here now" → 9 (three copies of "to be here").
    """
    words = _WORD.findall(text.lower())
    best = 0
    for n in range(1, max_n + 1):
        # a run of r positions j with words[j] == words[j + n] is an n-periodic stretch of r + n words,
        # i.e. (r + n) // n back-to-back copies of the n words it starts with: linear time per n
        run = 0
        for j in range(len(words) - n):
            run = run + 1 if words[j] == words[j + n] else 0
            copies = (run + n) // n
            if copies >= min_copies:
                best = max(best, copies * n)
    return best


def is_asr_loop(text: str) -> bool:
    """True when ``text`` (a transcript) is a repetition loop: compression ratio > 2.4, or one 1-8 word
    phrase repeated back to back ≥ 3 times over ≥ 8 words (module docstring)."""
    return compression_ratio(text) > COMPRESSION_RATIO_MAX or repeated_words(text) >= MIN_LOOP_WORDS
