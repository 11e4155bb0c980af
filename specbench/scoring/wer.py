"""Word and character error rates with jiwer 4 (``process_words`` / ``process_characters``).

Definitions (docs/metrics.md):

* utterance WER = (S + D + I) / N over words of the *normalised* reference and hypothesis, N = number
  of reference words; CER is the same over characters (spaces included).
* ``mean`` aggregation (default, seed-tts-eval convention): the arithmetic mean of utterance WERs, so
  every utterance weighs the same whatever its length.
* ``corpus`` aggregation (used with the ``whisper-english`` normaliser): Σ edits / Σ reference words,
  so long utterances weigh more.

The two disagree whenever error rates differ between short and long utterances; a result must record
which one it used (see :data:`DEFAULT_AGGREGATION`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from specbench.scoring.normalize import get_normalizer

Aggregation = Literal["mean", "corpus"]

#: The aggregation each normaliser's convention uses (docs/metrics.md).
DEFAULT_AGGREGATION: dict[str, Aggregation] = {"seed-tts-eval": "mean", "whisper-english": "corpus"}


def _rate(ref: str, hyp: str, unit: Literal["words", "characters"]) -> tuple[float, int, int]:
    """(error rate, edits, reference length) for already-normalised strings; handles empties."""
    ref_len = len(ref.split()) if unit == "words" else len(ref)
    if ref_len == 0:
        # jiwer's answer for an empty reference is not a rate; fix the convention here instead:
        # nothing to say and nothing said is perfect, anything said is entirely wrong.
        hyp_len = len(hyp.split()) if unit == "words" else len(hyp)
        return (0.0 if hyp_len == 0 else 1.0), hyp_len, 0
    if not hyp:
        # Everything deleted; computed directly so the result never depends on jiwer's empty handling.
        return 1.0, ref_len, ref_len
    import jiwer

    out = jiwer.process_words(ref, hyp) if unit == "words" else jiwer.process_characters(ref, hyp)
    edits = out.substitutions + out.deletions + out.insertions
    return edits / ref_len, edits, ref_len


def utterance_wer(ref: str, hyp: str, normalizer: str) -> dict[str, Any]:
    """Score one hypothesis against its reference after normalising both with ``normalizer``.

    Returns ``wer`` = (S+D+I)/N_words, ``cer`` = (S+D+I)/N_chars, ``ref_words`` = N_words, ``edits`` =
    S+D+I over words, ``ref_chars`` and ``char_edits`` (the character analogues, for corpus CER), and
    the normalised texts ``ref_norm`` / ``hyp_norm``.

    Edge cases: an empty normalised reference gives ``wer`` 0.0 when the hypothesis is empty too and
    1.0 otherwise (``edits`` then counts the inserted words); an empty hypothesis gives 1.0.
    WER may exceed 1.0 when the hypothesis has many insertions.
    """
    norm = get_normalizer(normalizer)
    ref_norm, hyp_norm = norm(ref), norm(hyp)
    wer, edits, ref_words = _rate(ref_norm, hyp_norm, "words")
    cer, char_edits, ref_chars = _rate(ref_norm, hyp_norm, "characters")
    return {
        "wer": wer,
        "cer": cer,
        "ref_words": ref_words,
        "edits": edits,
        "ref_chars": ref_chars,
        "char_edits": char_edits,
        "ref_norm": ref_norm,
        "hyp_norm": hyp_norm,
    }


def _ratio(edits: int, total: int) -> float:
    # Same convention as an empty utterance: no reference words anywhere is perfect only if nothing was said.
    if total == 0:
        return 0.0 if edits == 0 else 1.0
    return edits / total


def corpus_wer(refs: Sequence[str], hyps: Sequence[str], normalizer: str) -> float:
    """Corpus WER = Σ_i edits_i / Σ_i ref_words_i over normalised pairs (``refs[i]`` ↔ ``hyps[i]``).

    Raises ValueError when the sequences differ in length or are empty.
    """
    if len(refs) != len(hyps):
        raise ValueError(f"corpus_wer needs one hypothesis per reference, got {len(refs)} refs and {len(hyps)} hyps")
    return aggregate_wer([utterance_wer(r, h, normalizer) for r, h in zip(refs, hyps, strict=True)], "corpus")


def aggregate_wer(rows: Iterable[Mapping[str, Any]], mode: Aggregation = "mean") -> float:
    """Aggregate :func:`utterance_wer` rows into one WER.

    ``mean``: (1/n) Σ_i wer_i — the default, seed-tts-eval convention.
    ``corpus``: Σ_i edits_i / Σ_i ref_words_i — the convention paired with ``whisper-english``.
    Raises ValueError for no rows or an unknown mode.
    """
    return _aggregate(list(rows), mode, "wer", "edits", "ref_words")


def aggregate_cer(rows: Iterable[Mapping[str, Any]], mode: Aggregation = "mean") -> float:
    """As :func:`aggregate_wer` for characters: mean of ``cer`` or Σ char_edits / Σ ref_chars."""
    return _aggregate(list(rows), mode, "cer", "char_edits", "ref_chars")


def _aggregate(rows: list[Mapping[str, Any]], mode: str, rate: str, edits: str, total: str) -> float:
    if not rows:
        raise ValueError(f"cannot aggregate {rate} over zero utterances")
    if mode == "mean":
        return sum(float(r[rate]) for r in rows) / len(rows)
    if mode == "corpus":
        return _ratio(sum(int(r[edits]) for r in rows), sum(int(r[total]) for r in rows))
    raise ValueError(f"unknown aggregation mode '{mode}': choose mean or corpus")


#: Per-utterance WER above this counts as this in :func:`paired_wer_delta` (one clip on which the ASR
#: loops has WER ≫ 1 and would otherwise decide the mean of 40 differences).
DELTA_CAP = 1.0
#: Bootstrap resamples and seed of :func:`paired_wer_delta` (fixed: the interval is reproducible).
DELTA_BOOTSTRAP = 4000
DELTA_SEED = 0


def paired_wer_delta(method: Mapping[str, float], baseline: Mapping[str, float]) -> tuple[float, float, float] | None:
    """Paired WER difference of a decoder against the baseline, with a 95 % bootstrap interval.

    Over the utterances ``u`` both map (per-utterance WER, e.g. the mean over repeats):
    ``d_u = min(wer_method(u), 1) − min(wer_baseline(u), 1)``, ``delta = mean_u d_u``; the interval is
    the 2.5th and 97.5th percentiles of the mean of ``n`` utterances resampled with replacement,
    ``DELTA_BOOTSTRAP`` times from ``numpy.random.default_rng(DELTA_SEED)`` (percentile bootstrap over
    utterances). Pairing removes the sentence-to-sentence difficulty that dominates the spread of
    either mean, so an interval above 0 says the decoder loses words on these sentences. Returns
    ``(delta, lo, hi)``, or None without a common utterance.
    """
    import numpy as np

    common = sorted(set(method) & set(baseline))
    if not common:
        return None
    d = np.array([min(float(method[u]), DELTA_CAP) - min(float(baseline[u]), DELTA_CAP) for u in common])
    rng = np.random.default_rng(DELTA_SEED)
    means = d[rng.integers(0, d.size, size=(DELTA_BOOTSTRAP, d.size))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(d.mean()), float(lo), float(hi)
